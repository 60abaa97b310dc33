"""Which weights a service serves, in words every reply and log can carry."""

from __future__ import annotations

from pathlib import Path

from vita.common.v1 import common_pb2


def weights_info(preset: str, checkpoint: Path | None, dtype, device: str) -> common_pb2.WeightsInfo:
    dtype_name = str(dtype).removeprefix("torch.")
    if checkpoint is None:
        return common_pb2.WeightsInfo(source="random", name=preset, dtype=dtype_name, device=device)
    return common_pb2.WeightsInfo(source="checkpoint", name=str(checkpoint), dtype=dtype_name, device=device)


def describe(info: common_pb2.WeightsInfo) -> str:
    """"random:tiny" or "checkpoint:/path" — random weights always say so."""
    return f"{info.source}:{info.name}"
