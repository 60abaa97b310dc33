"""Video sampling (count rule, seeking, bounded cost), container/codec errors and live camera frames."""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.vision.images import ImageLimits, MediaInputError
from services.vision.video import (
    VideoLimits,
    frame_timestamps,
    frames_from_camera,
    sample_video,
    video_to_tiles,
)
from tests.vision.media import (
    FRAME_HEIGHT,
    FRAME_WIDTH,
    NonSeekableSink,
    audio_only_mp4,
    encode_image,
    frame_level,
    video_bytes,
    write_video,
)

SIXTY_SECOND_PICKS = [0.0, 3.0, 7.0, 11.0, 15.0, 19.0, 23.0, 27.0, 31.0, 35.0, 39.0, 43.0, 47.0, 51.0, 55.0, 59.0]


def _grey(image: Image.Image) -> int:
    """Mean level away from the red marker block."""
    return int(np.asarray(image)[16:, 16:, 1].mean().round())


# ------------------------------------------------------------------------------------- the count rule


@pytest.mark.parametrize(
    ("duration", "expected"),
    [
        (0.0, [0.0, 0.0, 0.0, 0.0]),
        (2.0, [0.0, 0.5, 1.0, 1.5]),
        (3.99, [0.0, 0.9975, 1.995, 2.9925]),
        (4.0, [0.0, 1.0, 2.0, 3.0]),
        (10.0, [float(s) for s in range(10)]),
        (10.5, [float(s) for s in range(11)]),
        (16.0, [float(s) for s in range(16)]),
        (16.5, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 16.0]),
        (60.0, SIXTY_SECOND_PICKS),
    ],
)
def test_frame_timestamps(duration: float, expected: list[float]) -> None:
    assert frame_timestamps(duration) == pytest.approx(expected)


def test_frame_timestamps_never_exceed_16_for_long_videos() -> None:
    two_hours = frame_timestamps(7200.0)
    assert len(two_hours) == 16 and two_hours[0] == 0.0 and two_hours[-1] == 7199.0


# -------------------------------------------------------------------------------------- real files


@pytest.mark.parametrize(
    ("seconds", "fps", "expected"),
    [
        (2, 8, [0.0, 0.5, 1.0, 1.5]),
        (10, 4, [float(s) for s in range(10)]),
        (60, 2, SIXTY_SECOND_PICKS),
    ],
)
def test_sampling_picks_the_right_frames(seconds: int, fps: int, expected: list[float]) -> None:
    data = video_bytes(fmt="mp4", codec="libx264", seconds=seconds, fps=fps)
    sampled = sample_video(data)
    assert sampled.duration_s == pytest.approx(seconds)
    assert sampled.timestamps_s == pytest.approx(expected)
    for image, time_s in zip(sampled.images, sampled.timestamps_s, strict=True):
        assert image.size == (FRAME_WIDTH, FRAME_HEIGHT)
        assert abs(_grey(image) - frame_level(round(time_s * fps))) <= 4
    tiles = video_to_tiles(data)
    assert tiles.pixel_values.shape == (len(expected), 3, 448, 448)


def test_close_samples_are_decoded_in_one_pass_and_far_ones_seek() -> None:
    short = sample_video(video_bytes(fmt="mp4", codec="libx264", seconds=10, fps=4))
    assert short.seeks == 1 and short.frames_decoded <= 40 + 4
    long = sample_video(video_bytes(fmt="mp4", codec="libx264", seconds=60, fps=2, gop=4))
    assert long.seeks == 16 and long.frames_decoded < 120


@pytest.mark.parametrize(("fmt", "codec"), [("webm", "libvpx-vp9"), ("matroska", "libx264"), ("mov", "mpeg4")])
def test_other_containers(fmt: str, codec: str) -> None:
    sampled = sample_video(video_bytes(fmt=fmt, codec=codec, seconds=5, fps=4))
    assert sampled.timestamps_s == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0])


def test_path_input(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    write_video(path, fmt="mp4", codec="libx264", seconds=2, fps=4)
    assert len(sample_video(path).images) == 4


def test_unknown_duration_is_found_from_the_last_keyframe() -> None:
    sink = NonSeekableSink()  # like a browser MediaRecorder webm: no duration, no cues
    write_video(sink, fmt="webm", codec="libvpx-vp9", seconds=10, fps=2)
    sampled = sample_video(bytes(sink.data))
    assert sampled.duration_s == pytest.approx(10.0)
    assert sampled.timestamps_s == pytest.approx([float(s) for s in range(10)])


def test_long_video_cost_is_bounded_by_the_samples() -> None:
    # Two hours at 0.5 fps with a keyframe every 10 frames (20 s): 3600 frames in ~100 KB. A full decode
    # would touch all 3600; seeking decodes at most one GOP per sample.
    data = video_bytes(fmt="mp4", codec="libx264", seconds=7200, fps=Fraction(1, 2), size=(32, 32), gop=10)
    started = time.perf_counter()
    sampled = sample_video(data)
    elapsed = time.perf_counter() - started
    assert sampled.duration_s == pytest.approx(7200.0)
    assert len(sampled.images) == 16 and sampled.timestamps_s[-1] == pytest.approx(7198.0)
    # One GOP per sample plus the decoder's couple of frames of delay: ~4.5 % of the file.
    assert sampled.frames_decoded <= 16 * (10 + 2)
    assert elapsed < 2.0


def test_sparse_keyframes_are_capped_per_sample() -> None:
    # One keyframe only: the per-sample budget stops the forward decode and takes the latest frame.
    data = video_bytes(fmt="mp4", codec="libx264", seconds=60, fps=5, size=(32, 32), gop=1000)
    sampled = sample_video(data, VideoLimits(max_decode_frames_per_sample=20))
    assert len(sampled.images) == 16
    assert sampled.frames_decoded <= 16 * 20


def test_display_rotation_is_applied() -> None:
    sampled = sample_video(video_bytes(fmt="mp4", codec="libx264", seconds=1, fps=4, rotation=90))
    image = sampled.images[0]
    assert image.size == (FRAME_HEIGHT, FRAME_WIDTH)
    red, green, _ = image.getpixel((3, FRAME_WIDTH - 4))  # counter-clockwise: top-left → bottom-left
    assert red > 180 and green < 80


# ------------------------------------------------------------------------------------------- errors


def _error(source: bytes | Path) -> MediaInputError:
    with pytest.raises(MediaInputError) as caught:
        sample_video(source)
    return caught.value


def test_audio_only_file_has_no_video_stream() -> None:
    assert _error(audio_only_mp4()).reason == "no_video_stream"


def test_truncated_mp4_without_index() -> None:
    data = video_bytes(fmt="mp4", codec="libx264", seconds=4, fps=4)  # moov written at the end
    error = _error(data[: len(data) // 2])
    assert error.reason == "corrupt" and "truncated" in str(error)


def test_truncated_faststart_mp4(tmp_path: Path) -> None:
    path = tmp_path / "faststart.mp4"
    # The index is at the front, so the file opens; the sample data then ends early.
    write_video(path, fmt="mp4", codec="libx264", seconds=10, fps=5, options={"movflags": "faststart"})
    data = path.read_bytes()
    error = _error(data[: len(data) * 2 // 3])
    assert error.reason == "corrupt" and "truncated" in str(error)


def test_unsupported_container_is_named() -> None:
    error = _error(video_bytes(fmt="avi", codec="mpeg4", seconds=1, fps=4))
    assert error.reason == "unsupported" and "'avi'" in str(error)


def test_garbage_and_empty() -> None:
    assert _error(b"not a video at all" * 100).reason == "unsupported"
    assert _error(b"").reason == "empty"


def test_oversized_frames_are_refused_before_decoding() -> None:
    data = video_bytes(fmt="mp4", codec="libx264", seconds=1, fps=4)
    with pytest.raises(MediaInputError) as caught:
        sample_video(data, VideoLimits(frame=ImageLimits(max_pixels=1000)))
    assert caught.value.reason == "too_large"


# ------------------------------------------------------------------------------------------- camera


def _camera(stamps_ms: list[int]) -> list[tuple[int, bytes]]:
    return [
        (stamp, encode_image(Image.new("RGB", (64, 48), (frame_level(i),) * 3), "JPEG", quality=95))
        for i, stamp in enumerate(stamps_ms)
    ]


def test_camera_window_uses_the_count_rule() -> None:
    frames = _camera(list(range(0, 10_000, 500)))  # 2 fps for 10 s, newest at 9.5 s
    clip = frames_from_camera(frames, window_s=4.0)
    # Window 5.5..9.5 s: 9 frames, 4.5 s long → one per second.
    assert clip.duration_s == pytest.approx(4.5)
    assert clip.timestamps_s == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0])
    assert clip.pixel_values.shape == (5, 3, 448, 448)
    assert clip.frames_decoded == 5


def test_short_camera_window_gives_four_frames() -> None:
    clip = frames_from_camera(list(reversed(_camera([0, 500, 1000]))), window_s=8.0)
    assert clip.timestamps_s == pytest.approx([0.0, 0.5, 1.0, 1.0])
    assert clip.frames_decoded == 3


def test_camera_errors() -> None:
    with pytest.raises(MediaInputError) as caught:
        frames_from_camera([], window_s=4.0)
    assert caught.value.reason == "empty"
    with pytest.raises(MediaInputError) as caught:
        frames_from_camera([(0, b"\xff\xd8\xff\xe0garbage")], window_s=4.0)
    assert caught.value.reason == "corrupt"
