"""Media that goes with a user turn, and the input audio format a stream declares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Union

from vita.assistant.v1 import assistant_pb2 as pb


@dataclass(frozen=True)
class Image:
    data: bytes = field(repr=False)  # JPEG, PNG, WebP or GIF
    max_tiles: int = 0  # 0: the session's max_image_tiles


@dataclass(frozen=True)
class Video:
    data: bytes = field(repr=False)  # MP4, WebM, MOV or MKV


Media = Union[Image, Video]


def media_to_proto(media: Iterable[Media]) -> list[pb.MediaInput]:
    out = []
    for item in media:
        if isinstance(item, Image):
            out.append(pb.MediaInput(image=item.data, max_tiles=item.max_tiles))
        elif isinstance(item, Video):
            out.append(pb.MediaInput(video=item.data))
        else:
            raise TypeError(f"media must be sdk.Image or sdk.Video, not {type(item).__name__}")
    return out


@dataclass(frozen=True)
class AudioFormat:
    """The format of the audio this stream appends; the server resamples to what its models need."""

    sample_rate_hz: int  # 8000-192000
    encoding: str = "pcm16"  # "pcm16" (signed 16-bit LE) or "f32" (32-bit float LE, [-1, 1])

    def __post_init__(self):
        if self.encoding not in _ENCODINGS:
            raise ValueError(f"encoding must be one of {sorted(_ENCODINGS)}, not {self.encoding!r}")

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding == "pcm16" else 4

    def duration_ms(self, num_bytes: int) -> float:
        return num_bytes / self.bytes_per_sample * 1000.0 / self.sample_rate_hz

    def start_fields(self) -> dict:
        return {"input_sample_rate_hz": self.sample_rate_hz, "input_encoding": _ENCODINGS[self.encoding]}


_ENCODINGS = {"pcm16": pb.AUDIO_ENCODING_PCM16, "f32": pb.AUDIO_ENCODING_F32}
