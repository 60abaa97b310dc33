"""torch.Tensor ↔ `vita.common.v1.Tensor`: raw little-endian bytes + dtype + shape, never pickle."""

from __future__ import annotations

import numpy as np
import torch

from vita.common.v1 import common_pb2

_TORCH_BY_NAME: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
}
_NAME_BY_TORCH = {dtype: name for name, dtype in _TORCH_BY_NAME.items()}


class TensorDecodeError(ValueError):
    """A Tensor message whose dtype, shape and byte count disagree."""


def to_proto(tensor: torch.Tensor) -> common_pb2.Tensor:
    tensor = tensor.detach().to("cpu").contiguous()
    name = _NAME_BY_TORCH.get(tensor.dtype)
    if name is None:
        raise TypeError(f"tensor dtype {tensor.dtype} cannot be sent")
    # bfloat16 has no numpy dtype: ship its 16-bit patterns as they are.
    raw = tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor
    return common_pb2.Tensor(dtype=name, shape=list(tensor.shape), data=raw.numpy().tobytes())


def from_proto(message: common_pb2.Tensor) -> torch.Tensor:
    dtype = _TORCH_BY_NAME.get(message.dtype)
    if dtype is None:
        raise TensorDecodeError(f"unsupported tensor dtype {message.dtype!r}")
    shape = tuple(int(d) for d in message.shape)
    if any(d < 0 for d in shape):
        raise TensorDecodeError(f"negative tensor dimension in shape {shape}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    expected = int(np.prod(shape, dtype=np.int64)) * itemsize
    if len(message.data) != expected:
        raise TensorDecodeError(
            f"tensor of shape {shape} and dtype {message.dtype} needs {expected} bytes, got {len(message.data)}"
        )
    storage_dtype = torch.int16 if dtype == torch.bfloat16 else dtype
    flat = torch.frombuffer(bytearray(message.data), dtype=storage_dtype) if expected else torch.empty(0, dtype=storage_dtype)
    flat = flat.view(dtype) if dtype == torch.bfloat16 else flat
    return flat.reshape(shape)
