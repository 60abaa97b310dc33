"""Small media made on the fly for the vision tests (no binary fixtures in the repository)."""

from __future__ import annotations

import io
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

FRAME_WIDTH, FRAME_HEIGHT = 64, 48


def encode_image(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_from_header(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 0) -> bytes:
    """A valid PNG of zero rows, written chunk by chunk: only the header's size is large.

    The zlib stream is produced row by row, so a 10000×10000 1-bit picture costs ~12 KB and no big buffer.
    """

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width * bit_depth + 7) // 8)  # filter byte + samples
    pieces = [compressor.compress(row) for _ in range(height)]
    pieces.append(compressor.flush())
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(pieces)) + chunk(b"IEND", b"")


def frame_level(index: int) -> int:
    """Grey level that identifies frame `index` after lossy coding (steps of 16)."""
    return (index * 16) % 256


def write_video(
    target: io.BytesIO | Path | object,
    *,
    fmt: str,
    codec: str,
    seconds: float,
    fps: Fraction | int,
    size: tuple[int, int] = (FRAME_WIDTH, FRAME_HEIGHT),
    gop: int | None = None,
    options: dict[str, str] | None = None,
    rotation: int | None = None,
) -> None:
    """Frames of uniform grey `frame_level(i)` (a red 8×8 block top-left), at a constant rate."""
    width, height = size
    with av.open(target, "w", format=fmt, options=options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.codec_context.options = {"preset": "ultrafast"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for index in range(int(round(seconds * float(fps)))):
            pixels = np.full((height, width, 3), frame_level(index), np.uint8)
            pixels[:8, :8] = (255, 0, 0)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def video_bytes(**kwargs: object) -> bytes:
    buffer = io.BytesIO()
    write_video(buffer, **kwargs)
    return buffer.getvalue()


class NonSeekableSink(io.RawIOBase):
    """A write-only stream: muxers cannot go back to write a duration or an index."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, payload: bytes) -> int:  # type: ignore[override]
        self.data += payload
        return len(payload)


def audio_only_mp4(seconds: float = 1.0) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        samples = np.zeros((1, 1024), np.float32)
        for index in range(int(seconds * 16000 / 1024)):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = index * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()
