"""A tensor as it travels between processes: dtype name + shape + little-endian bytes, never pickle.

Torch-free on purpose: the orchestrator only forwards embedding rows from the encoders to the LLM, so it
handles them as bytes and never pays the torch import. The model services turn a `WireTensor` into a
`torch.Tensor` with `shared.tensors`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from vita.common.v1 import common_pb2

# Bytes per element of each dtype the wire form carries (the `vita.common.v1.Tensor.dtype` names).
ITEMSIZE: dict[str, int] = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int16": 2,
    "int32": 4,
    "int64": 8,
}


class TensorDecodeError(ValueError):
    """A tensor whose dtype, shape and byte count disagree, or row chunks that do not line up."""


@dataclass(frozen=True)
class WireTensor:
    """A checked tensor in wire form: `data` holds exactly product(shape) elements of `dtype`."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes = field(repr=False)  # megabytes for an image: kept out of log lines and test diffs

    def __post_init__(self) -> None:
        itemsize = ITEMSIZE.get(self.dtype)
        if itemsize is None:
            raise TensorDecodeError(f"unsupported tensor dtype {self.dtype!r}")
        if any(d < 0 for d in self.shape):
            raise TensorDecodeError(f"negative tensor dimension in shape {self.shape}")
        expected = math.prod(self.shape) * itemsize
        if len(self.data) != expected:
            raise TensorDecodeError(
                f"tensor of shape {self.shape} and dtype {self.dtype} needs {expected} bytes, got {len(self.data)}"
            )

    @classmethod
    def from_message(cls, message: common_pb2.Tensor) -> WireTensor:
        return cls(message.dtype, tuple(int(d) for d in message.shape), bytes(message.data))

    def to_message(self) -> common_pb2.Tensor:
        return common_pb2.Tensor(dtype=self.dtype, shape=list(self.shape), data=self.data)

    @property
    def num_rows(self) -> int:
        """Length of the first dimension: embedding rows are [num_rows, hidden]."""
        if not self.shape:
            raise TensorDecodeError("a scalar tensor has no rows")
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return len(self.data)


def concat_rows(chunks: list[WireTensor]) -> WireTensor:
    """Joins row chunks along the first dimension, as the encoders stream them (one chunk per tile or
    frame). Row-major layout makes that a plain byte concatenation once dtype and row shape agree."""
    if not chunks:
        raise TensorDecodeError("no row chunks to join")
    first = chunks[0]
    for chunk in chunks:
        if not chunk.shape or chunk.dtype != first.dtype or chunk.shape[1:] != first.shape[1:]:
            raise TensorDecodeError(
                f"cannot join rows of {chunk.dtype}{list(chunk.shape)} to {first.dtype}{list(first.shape)}"
            )
    if len(chunks) == 1:
        return first
    rows = sum(chunk.shape[0] for chunk in chunks)
    return WireTensor(first.dtype, (rows, *first.shape[1:]), b"".join(chunk.data for chunk in chunks))
