"""Video files and live camera frames → one 448 tile per sampled frame.

Frame count (VITA-1.5 paper rule, close to the reference's HF demo; docs/MODEL.md#video): a clip
shorter than 4 s gives 4 frames spread uniformly over it; 4-16 s gives one frame per second (t = 0, 1, …);
longer clips give 16 frames picked evenly (numpy linspace, truncated) from that one-per-second grid, as
the HF demo does. Unlike the HF demo, a clip shorter than 4 s is not sampled on the 1 fps grid (which
repeats frames) but at t = k·D/4.

Each frame becomes one tile by the CLIP geometry (shortest edge → 448 bicubic, centre crop), as the HF
demo and training did. The real-time reference server instead squashes the frame to 448×448; we follow
training (docs/MODEL.md#d-video-frames), so the edges of a wide frame are cropped away rather than the
picture distorted.

Cost is bounded by the number of samples, never by the file's length: each sample seeks (on the video
stream, to the keyframe before it) and decodes forward to the first frame at/after the target; samples
close together are decoded in one forward pass instead; forward decoding per sample has a frame budget.
Display rotation (phone videos) is applied.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import av.error
import numpy as np
import torch
from PIL import Image

from services.vision.images import (
    DEFAULT_IMAGE_LIMITS,
    REASON_CORRUPT,
    REASON_EMPTY,
    REASON_NO_VIDEO_STREAM,
    REASON_TOO_LARGE,
    REASON_UNSUPPORTED,
    ImageLimits,
    MediaInputError,
    check_dimensions,
    decode_image,
    normalize_tiles,
)

MIN_FRAMES = 4
MAX_FRAMES = 16
SHORT_CLIP_S = 4.0  # below: MIN_FRAMES uniformly
LONG_CLIP_S = 16.0  # above: MAX_FRAMES uniformly; in between: 1 frame per second
# A frame whose timestamp is this close before the target counts as "at" it (timebase rounding).
TIMESTAMP_TOLERANCE_S = 1e-3

# FFmpeg demuxer names (`container.format.name`) of mp4/mov and mkv/webm.
SUPPORTED_CONTAINERS = {"mov,mp4,m4a,3gp,3g2,mj2": "mp4/mov", "matroska,webm": "mkv/webm"}
SUPPORTED_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg", "prores", "mpeg2video"})
_SUPPORTED_NAMES = "an mp4, mov, webm or mkv video (H.264, HEVC, VP8, VP9, AV1, MPEG-4, MJPEG or ProRes)"
_MP4_BOX_TYPES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")
_MATROSKA_MAGIC = b"\x1a\x45\xdf\xa3"
_SEEK_TO_END = 2**62  # a pts past any real end: seeking there lands on the last keyframe
# `VideoFrame.rotation` is the display matrix's counter-clockwise angle; PIL's ROTATE_90 is counter-clockwise.
# Other angles and display-matrix flips are rare in practice and left as stored.
_DISPLAY_TURNS = {
    90: Image.Transpose.ROTATE_90,
    -90: Image.Transpose.ROTATE_270,
    180: Image.Transpose.ROTATE_180,
    -180: Image.Transpose.ROTATE_180,
}


@dataclass(frozen=True)
class VideoLimits:
    max_bytes: int = 2 * 1024**3
    frame: ImageLimits = DEFAULT_IMAGE_LIMITS
    # Frames decoded forward for one sample before settling for the latest one (a file with very sparse
    # keyframes would otherwise cost a full decode per sample). 1024 frames ≈ 17 s at 60 fps.
    max_decode_frames_per_sample: int = 1024
    # When the next sample is at most this far ahead, decode on instead of seeking.
    forward_decode_window_s: float = 2.0


DEFAULT_VIDEO_LIMITS = VideoLimits()


def frame_timestamps(duration_s: float) -> list[float]:
    """Sample times in seconds from the start of the clip, by the count rule in the module docstring."""
    if not math.isfinite(duration_s) or duration_s < 0:
        raise ValueError(f"duration must be a finite number ≥ 0, got {duration_s}")
    if duration_s < SHORT_CLIP_S:
        return [index * duration_s / MIN_FRAMES for index in range(MIN_FRAMES)]
    # Whole seconds inside [0, D); the tolerance keeps 10.0000001 s at 10 samples.
    grid = [float(second) for second in range(math.ceil(duration_s - TIMESTAMP_TOLERANCE_S))]
    if len(grid) <= MAX_FRAMES:
        return grid
    picks = np.linspace(0, len(grid) - 1, num=MAX_FRAMES, dtype=int)
    return [grid[int(index)] for index in picks]


@dataclass(frozen=True)
class VideoTiles:
    pixel_values: torch.Tensor  # [frames, 3, 448, 448] float32, one tile per sampled frame
    timestamps_s: list[float]  # actual time of each frame from the clip start
    duration_s: float
    frames_decoded: int = 0  # decoding work done (bounded by samples × budget, not by the file's length)
    seeks: int = 0


@dataclass
class SampledFrames:
    images: list[Image.Image]
    timestamps_s: list[float]
    duration_s: float
    frames_decoded: int
    seeks: int
    targets_s: list[float] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ opening


def _open_container(source: bytes | Path | str, limits: VideoLimits) -> av.container.InputContainer:
    if isinstance(source, (bytes, bytearray, memoryview)):
        size = len(source)
        head = bytes(source[:16])
        target: io.BytesIO | str = io.BytesIO(source)
    else:
        path = os.fspath(source)
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as handle:
                head = handle.read(16)
        except OSError:
            raise MediaInputError(REASON_EMPTY, "the video file could not be read") from None
        target = path
    if size == 0:
        raise MediaInputError(REASON_EMPTY, "the video is empty (0 bytes)")
    if size > limits.max_bytes:
        raise MediaInputError(
            REASON_TOO_LARGE,
            f"the video file is {size / 2**20:.0f} MiB; the limit is {limits.max_bytes / 2**20:.0f} MiB",
        )
    try:
        # Damaged metadata text must not reject a playable file.
        container = av.open(target, mode="r", metadata_errors="replace")
    except av.error.FFmpegError:
        if _looks_like_supported_container(head):
            raise MediaInputError(
                REASON_CORRUPT, "the video file is damaged or truncated (its index is missing); re-upload it"
            ) from None
        raise MediaInputError(REASON_UNSUPPORTED, f"the data is not {_SUPPORTED_NAMES}") from None
    if container.format.name not in SUPPORTED_CONTAINERS:
        name = container.format.name.split(",")[0]
        container.close()
        raise MediaInputError(REASON_UNSUPPORTED, f"'{name}' files are not supported; send {_SUPPORTED_NAMES}")
    return container


def _looks_like_supported_container(head: bytes) -> bool:
    return head[4:8] in _MP4_BOX_TYPES or head.startswith(_MATROSKA_MAGIC)


def _pick_video_stream(container: av.container.InputContainer, limits: VideoLimits) -> av.video.stream.VideoStream:
    # Cover art in an audio file is a one-picture "video" stream marked attached_pic: not a video.
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        raise MediaInputError(REASON_NO_VIDEO_STREAM, "the file has no video stream (is it audio only?)")
    stream = streams[0]
    codec = stream.codec_context.codec.canonical_name
    if codec not in SUPPORTED_CODECS:
        raise MediaInputError(
            REASON_UNSUPPORTED, f"the video codec '{codec}' is not supported; send {_SUPPORTED_NAMES}"
        )
    width, height = stream.codec_context.width, stream.codec_context.height
    if width and height:
        check_dimensions(width, height, limits.frame, what="video frame")
    return stream


# ----------------------------------------------------------------------------------------- decoding


class _FrameSeeker:
    """Returns the first frame at/after a target time, seeking when that is cheaper than decoding on."""

    def __init__(
        self, container: av.container.InputContainer, stream: av.video.stream.VideoStream, limits: VideoLimits
    ) -> None:
        self._container = container
        self._stream = stream
        self._limits = limits
        self._time_base = stream.time_base
        self._start_s = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        rate = stream.average_rate or stream.guessed_rate
        self.frame_interval_s = float(1 / rate) if rate else 0.0
        self._frames: Iterator[av.VideoFrame] | None = None
        self._current: av.VideoFrame | None = None
        self._current_s = 0.0
        self._answered_s: float | None = None  # last target answered with `_current`
        self._at_end = False
        self.frames_decoded = 0
        self.seeks = 0

    def _seek(self, target_s: float | None) -> None:
        offset = _SEEK_TO_END if target_s is None else max(0, int((self._start_s + target_s) / self._time_base))
        try:
            self._container.seek(offset, stream=self._stream, backward=True, any_frame=False)
        except av.error.FFmpegError:
            raise MediaInputError(REASON_CORRUPT, "the video file is damaged: seeking in it failed") from None
        self.seeks += 1
        self._frames = self._container.decode(self._stream)
        self._current, self._answered_s = None, None
        self._current_s = target_s if target_s is not None else self._current_s
        self._at_end = False

    def _decode_next(self) -> bool:
        assert self._frames is not None
        try:
            frame = next(self._frames)
        except StopIteration:
            self._at_end = True
            return False
        except av.error.FFmpegError:
            raise MediaInputError(
                REASON_CORRUPT,
                f"the video stream is damaged or truncated near {self._current_s:.1f} s; re-upload the complete file",
            ) from None
        self.frames_decoded += 1
        if frame.time is not None:
            self._current_s = frame.time - self._start_s
        elif self._current is not None:
            self._current_s += self.frame_interval_s  # no timestamp: assume a constant rate
        self._current = frame
        return True

    def frame_at(self, target_s: float) -> tuple[av.VideoFrame, float]:
        tolerance = TIMESTAMP_TOLERANCE_S
        current = self._current
        if current is None:
            self._seek(target_s)
        elif self._answered_s is not None and self._answered_s <= target_s <= self._current_s + tolerance:
            # Every frame before `current` lies before an earlier target: it is still the first one at/after.
            self._answered_s = target_s
            return current, self._current_s
        elif self._current_s > target_s + tolerance:
            self._seek(target_s)  # the target lies behind the decoder
        elif self._at_end:
            self._answered_s = target_s
            return current, self._current_s  # nothing lies beyond the last frame
        elif target_s - self._current_s > self._limits.forward_decode_window_s:
            self._seek(target_s)
        budget = self._limits.max_decode_frames_per_sample
        while self._current is None or self._current_s < target_s - tolerance:
            if budget == 0 or not self._decode_next():
                break
            budget -= 1
        if self._current is None:
            raise MediaInputError(REASON_CORRUPT, f"no video frame could be decoded near {target_s:.1f} s")
        self._answered_s = target_s
        return self._current, self._current_s

    def last_frame_time(self) -> float | None:
        """Time of the last frame, found from the last keyframe (for files that do not state a duration)."""
        self._seek(None)
        budget = self._limits.max_decode_frames_per_sample
        while budget and self._decode_next():
            budget -= 1
        last = self._current_s if self._current is not None else None
        self._frames, self._current, self._answered_s = None, None, None  # the next request seeks again
        return last


def _duration_s(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, seeker: _FrameSeeker
) -> float:
    if stream.duration is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    # No duration in the headers (e.g. a browser MediaRecorder webm): find the last frame.
    last = seeker.last_frame_time()
    if last is None:
        raise MediaInputError(REASON_CORRUPT, "no video frame could be decoded from the file")
    return last + seeker.frame_interval_s


def _to_upright_rgb(frame: av.VideoFrame, limits: VideoLimits) -> Image.Image:
    check_dimensions(frame.width, frame.height, limits.frame, what="video frame")
    image = frame.to_image()  # RGB24 via swscale
    transpose = _DISPLAY_TURNS.get(frame.rotation)
    return image.transpose(transpose) if transpose is not None else image


def sample_video(source: bytes | Path | str, limits: VideoLimits = DEFAULT_VIDEO_LIMITS) -> SampledFrames:
    """Decode only the frames the count rule asks for, as upright RGB images."""
    container = _open_container(source, limits)
    try:
        stream = _pick_video_stream(container, limits)
        seeker = _FrameSeeker(container, stream, limits)
        duration = _duration_s(container, stream, seeker)
        targets = frame_timestamps(duration)
        images: list[Image.Image] = []
        times: list[float] = []
        last_pts: int | None = None
        for target in targets:
            frame, time_s = seeker.frame_at(target)
            if images and frame.pts is not None and frame.pts == last_pts:
                images.append(images[-1])  # same frame again (clip end, repeats): convert once
            else:
                images.append(_to_upright_rgb(frame, limits))
            last_pts = frame.pts
            times.append(time_s)
        return SampledFrames(images, times, duration, seeker.frames_decoded, seeker.seeks, targets)
    finally:
        container.close()


def video_to_tiles(source: bytes | Path | str, limits: VideoLimits = DEFAULT_VIDEO_LIMITS) -> VideoTiles:
    """A video file (bytes or path) → one normalised 448 tile per sampled frame."""
    sampled = sample_video(source, limits)
    return VideoTiles(
        pixel_values=normalize_tiles(sampled.images),
        timestamps_s=sampled.timestamps_s,
        duration_s=sampled.duration_s,
        frames_decoded=sampled.frames_decoded,
        seeks=sampled.seeks,
    )


# ------------------------------------------------------------------------------------------- camera


def frames_from_camera(
    jpeg_frames: Sequence[tuple[int, bytes]],
    window_s: float,
    limits: ImageLimits = DEFAULT_IMAGE_LIMITS,
) -> VideoTiles:
    """Live camera frames `(timestamp_ms, encoded image)` → the turn's video.

    Only frames of the last `window_s` seconds (relative to the newest frame) count. The same count rule
    as for files applies to the window's span; each sample takes the first frame at/after its time. Only
    the chosen frames are decoded. As in the reference, a window with fewer frames than samples repeats
    frames (4 samples minimum).
    """
    if window_s <= 0:
        raise ValueError(f"window_s must be > 0, got {window_s}")
    if not jpeg_frames:
        raise MediaInputError(REASON_EMPTY, "no camera frames were received for this turn")
    ordered = sorted(jpeg_frames, key=lambda item: item[0])
    newest_ms = ordered[-1][0]
    window = [item for item in ordered if item[0] >= newest_ms - window_s * 1000.0]
    first_ms = window[0][0]
    span_ms = newest_ms - first_ms
    # A clip of N frames at interval Δ lasts N·Δ (as a file's duration does), not (N-1)·Δ.
    interval_ms = span_ms / (len(window) - 1) if len(window) > 1 else 0.0
    duration_s = (span_ms + interval_ms) / 1000.0
    chosen: list[int] = []
    for target_s in frame_timestamps(duration_s):
        target_ms = first_ms + target_s * 1000.0 - TIMESTAMP_TOLERANCE_S * 1000.0
        index = next((i for i, (stamp, _) in enumerate(window) if stamp >= target_ms), len(window) - 1)
        chosen.append(index)
    decoded: dict[int, Image.Image] = {index: decode_image(window[index][1], limits) for index in set(chosen)}
    return VideoTiles(
        pixel_values=normalize_tiles([decoded[index] for index in chosen]),
        timestamps_s=[(window[index][0] - first_ms) / 1000.0 for index in chosen],
        duration_s=duration_s,
        frames_decoded=len(decoded),
    )
