"""Client audio on its way to the audio service: cut into whole samples, in pieces the service takes, and
float audio checked before it is sent.

Why here and not only in the audio service: the service refuses bad audio by ending its stream, and a
chunk still being written to a stream as it ends makes grpc replace the stream's status with a local
INTERNAL error, so the client would hear "the audio service failed" instead of what was wrong.
"""

from __future__ import annotations

import math
import sys
from array import array

BYTES_PER_SAMPLE = {"pcm16": 2, "f32": 4}
# The audio service takes chunks of up to its max_chunk_ms, which is never below 100 ms.
PIECE_MS = 100
# As the audio service: float audio is declared in [-1, 1]; beyond this it is integer-scaled garbage.
F32_MAX_ABS = 2.0


class PcmRejected(ValueError):
    pass


def check_f32(data: bytes) -> None:
    """Raises PcmRejected for NaN, infinity, or samples far outside [-1, 1]."""
    samples = array("f")
    samples.frombytes(data)
    if sys.byteorder == "big":
        samples.byteswap()
    for index, value in enumerate(samples):
        if not -F32_MAX_ABS <= value <= F32_MAX_ABS:
            if math.isfinite(value):
                raise PcmRejected(
                    f"float audio peaks at {value:g} (sample {index} of the chunk), far outside [-1, 1]; scale "
                    "samples to [-1, 1] (integer-scaled samples should be sent as pcm16)"
                )
            raise PcmRejected(
                f"float audio contains NaN or infinity (sample {index} of the chunk); send finite samples in [-1, 1]"
            )


class PcmFramer:
    """Bytes as the client cut them in, whole samples out, at most PIECE_MS per piece."""

    def __init__(self, encoding: str, sample_rate_hz: int):
        self.encoding = encoding
        self.width = BYTES_PER_SAMPLE[encoding]
        self._piece_bytes = max(self.width, sample_rate_hz * PIECE_MS // 1000 * self.width)
        self._partial = b""  # the start of a sample whose other bytes have not arrived yet

    def feed(self, data: bytes) -> list[bytes]:
        data = self._partial + data
        whole = len(data) - len(data) % self.width
        self._partial = data[whole:]
        if self.encoding == "f32" and whole:
            try:
                check_f32(data[:whole])
            except PcmRejected:
                self._partial = b""
                raise
        return [data[start : min(start + self._piece_bytes, whole)] for start in range(0, whole, self._piece_bytes)]

    def take_stray(self) -> int:
        """Bytes of an incomplete last sample, dropped."""
        stray, self._partial = len(self._partial), b""
        return stray

    def clear(self) -> None:
        self._partial = b""
