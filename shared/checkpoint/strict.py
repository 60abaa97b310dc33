"""Strict mapping between checkpoint tensors and a runtime module, and loading without partial states.

Every service follows the same two steps:

1. `check_tensors`: the tensors found in the files it reads (header facts only) against the tensors its
   runtime module needs (shapes derived from the config files). Missing, wrongly shaped, non-floating or
   unexpected tensors stop the service with a `CheckpointError` naming the file and key; tensors that the
   reference also ignores are accepted only when an explicit known-unused rule names them.
2. `materialize` + `load_into`: the module is built on the meta device (no throw-away random init),
   allocated on the target device in the target dtype, and every parameter and persistent buffer is
   written exactly once; anything left unwritten is an error, so a partly loaded model is never returned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from shared.checkpoint.errors import CheckpointError
from shared.checkpoint.files import ShardedSafetensors, TensorInfo
from shared.checkpoint.layout import is_derived_buffer, shard_owner

Shape = tuple[int, ...]


@dataclass
class ServicePlan:
    """What one service would load from a checkpoint, known before any weight data is read."""

    service: str
    dims: dict[str, object]  # the shared.presets dataclasses it built, by module name
    files: list[Path]  # every file it reads
    consumed: list[TensorInfo]
    unused: list[TensorInfo] = field(default_factory=list)  # present, known, deliberately not loaded
    notes: list[str] = field(default_factory=list)


def tensor_infos(path: Path, tensors: Mapping[str, torch.Tensor]) -> dict[str, TensorInfo]:
    return {key: TensorInfo(path, key, tuple(t.shape), t.dtype) for key, t in tensors.items()}


def check_tensors(
    found: Mapping[str, TensorInfo],
    expected: Mapping[str, Shape],
    *,
    missing_in: Path,
    shapes_from: str,
    unused: Callable[[str], bool] = lambda key: False,
) -> list[TensorInfo]:
    """Raises on the first problem; returns the found tensors that are known-unused."""
    for key, shape in expected.items():
        info = found.get(key)
        if info is None:
            raise CheckpointError(missing_in, key, "missing")
        if not info.dtype.is_floating_point:
            raise CheckpointError(info.path, key, f"has dtype {str(info.dtype).removeprefix('torch.')}, expected a floating-point tensor")
        if info.shape != shape:
            raise CheckpointError(
                info.path, key, f"has shape {list(info.shape)}, expected {list(shape)} from {shapes_from}"
            )
    known_unused = []
    for key, info in found.items():
        if key in expected:
            continue
        if not unused(key):
            raise CheckpointError(info.path, key, "unexpected tensor: no module of this server consumes it")
        known_unused.append(info)
    return known_unused


def owned_shard_keys(root: Path, service: str, key_pattern: str, what: str) -> tuple[ShardedSafetensors, list[str]]:
    """Opens the VITA safetensors, checks every key belongs to some service, and returns the keys `service`
    reads; a checkpoint without any is refused, naming `what` is missing."""
    shards = ShardedSafetensors(root)
    check_index_keys(shards)
    owned = [key for key in shards.keys() if shard_owner(key) == service]
    if not owned:
        raise CheckpointError(
            shards.index_path, key_pattern,
            f"no {what} tensors: this checkpoint has no {service} weights, the {service} service cannot serve it",
        )
    return shards, owned


def check_index_keys(shards: ShardedSafetensors) -> None:
    """Every key of the VITA safetensors belongs to a known module (whichever service reads it)."""
    for key in shards.keys():
        if shard_owner(key) is None and not is_derived_buffer(key):
            raise CheckpointError(shards.file_of(key), key, "unexpected tensor: no service of this server consumes it")


def module_shapes(module: nn.Module) -> dict[str, Shape]:
    """Parameter and persistent-buffer shapes by state-dict name."""
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


def on_meta(factory: Callable[[], nn.Module], config_path: Path) -> nn.Module:
    """The runtime module with its shapes and no storage; an architecture error names the config file."""
    try:
        with torch.device("meta"):
            return factory()
    except ValueError as err:
        raise CheckpointError(config_path, None, f"describes a model this server cannot build: {err}") from None


def materialize(module: nn.Module, *, device: torch.device | str, dtype: torch.dtype) -> nn.Module:
    """Storage for a meta module: allocated, uninitialised (load_into fills every entry)."""
    return module.to(dtype=dtype).to_empty(device=device)


def load_into(module: nn.Module, tensors: Iterable[tuple[str, torch.Tensor]], *, source: Path) -> None:
    """Copies each (state-dict name, tensor) into the module (casting to its dtype and device); every
    parameter and persistent buffer must be written exactly once."""
    targets = module.state_dict(keep_vars=True)
    remaining = set(targets)
    with torch.no_grad():
        for name, tensor in tensors:
            if name not in remaining:
                raise CheckpointError(source, name, "written twice or unknown to the runtime module")
            targets[name].copy_(tensor)
            remaining.discard(name)
    if remaining:
        raise CheckpointError(source, sorted(remaining)[0], "was not loaded (internal mapping error)")


def finish(module: nn.Module) -> nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


def non_persistent_buffers(module: nn.Module) -> set[str]:
    """Buffers that no checkpoint holds (computed at construction): after `materialize` they hold garbage,
    so the caller must recompute each one; a loader asserts it knows the full list."""
    persistent = set(module.state_dict())
    return {name for name, _ in module.named_buffers() if name not in persistent}
