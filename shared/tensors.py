"""torch.Tensor ↔ wire tensor, for the model services (they hold torch anyway).

The wire form and its checks live in the torch-free `shared.wire_tensor`, which is all the orchestrator
needs; importing this module costs the torch import.
"""

from __future__ import annotations

import torch

from shared.wire_tensor import ITEMSIZE, TensorDecodeError, WireTensor
from vita.common.v1 import common_pb2

__all__ = ["TensorDecodeError", "from_proto", "from_wire", "to_proto", "to_wire"]

_TORCH_BY_NAME: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
}
_NAME_BY_TORCH = {dtype: name for name, dtype in _TORCH_BY_NAME.items()}
assert _TORCH_BY_NAME.keys() == ITEMSIZE.keys()


def to_wire(tensor: torch.Tensor) -> WireTensor:
    tensor = tensor.detach().to("cpu").contiguous()
    name = _NAME_BY_TORCH.get(tensor.dtype)
    if name is None:
        raise TypeError(f"tensor dtype {tensor.dtype} cannot be sent")
    # bfloat16 has no numpy dtype: ship its 16-bit patterns as they are.
    raw = tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor
    return WireTensor(name, tuple(tensor.shape), raw.numpy().tobytes())


def from_wire(wire: WireTensor) -> torch.Tensor:
    """A writable tensor of its own (the wire bytes are immutable and may be shared)."""
    dtype = _TORCH_BY_NAME[wire.dtype]
    storage_dtype = torch.int16 if dtype == torch.bfloat16 else dtype
    if wire.data:
        flat = torch.frombuffer(bytearray(wire.data), dtype=storage_dtype)
    else:
        flat = torch.empty(0, dtype=storage_dtype)
    flat = flat.view(dtype) if dtype == torch.bfloat16 else flat
    return flat.reshape(wire.shape)


def to_proto(tensor: torch.Tensor) -> common_pb2.Tensor:
    return to_wire(tensor).to_message()


def from_proto(message: common_pb2.Tensor) -> torch.Tensor:
    return from_wire(WireTensor.from_message(message))
