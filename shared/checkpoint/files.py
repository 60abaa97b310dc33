"""Readers for the file formats of the official layout, each failing with a `CheckpointError` that names
the file: JSON / YAML configs, `.pt` state dicts (torch.save of dicts of tensors), and sharded safetensors.

Safetensors are read header-first: shapes and dtypes of every tensor are known (and checked) before a byte
of weight data is read, and a service reads only the tensors it asked for.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import SafetensorError, safe_open

from shared.checkpoint.errors import CheckpointError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# safetensors dtype names -> torch dtypes (the ones a checkpoint of this model can hold).
SAFETENSORS_DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
# How to memory-map each floating dtype with numpy (bf16 has no numpy type: mapped as uint16, then viewed).
_NUMPY_STORAGE = {torch.bfloat16: np.uint16, torch.float16: np.float16, torch.float32: np.float32}


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lies and what it is, known without reading its data."""

    path: Path
    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(path, None, "file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(path, None, f"is not valid JSON ({err})") from None


def read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(path, None, "file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise CheckpointError(path, None, f"is not valid YAML ({err})") from None


def load_pt(path: Path) -> dict[str, Any]:
    """A `torch.save`d dict, read weights-only (no code runs) and memory-mapped (data read on first use)."""
    if not path.is_file():
        raise CheckpointError(path, None, "file not found")
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, OSError):
            # Legacy (pre-zip) files cannot be memory-mapped; a damaged file fails again here, with torch's
            # clearer message.
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, pickle.UnpicklingError, EOFError... for bad files
        raise CheckpointError(path, None, f"is not a readable torch.save file, truncated or corrupt ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(path, None, f"holds a {type(data).__name__}, expected a dict of tensors")
    return data


def flatten_state_dict(path: Path, state: Mapping[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of a (possibly nested) dict as dotted keys; anything that is not a tensor is an error."""
    flat: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            flat[name] = value
        elif isinstance(value, Mapping):
            flat.update(flatten_state_dict(path, value, f"{name}."))
        else:
            raise CheckpointError(path, name, f"is a {type(value).__name__}, expected a tensor")
    return flat


class ShardedSafetensors:
    """The VITA safetensors: `model.safetensors.index.json` + shards, or one `model.safetensors`.

    Opening checks the index and that every file it names exists; `infos(keys)` reads the headers of just
    the shards holding `keys` (and checks that each such shard holds exactly the keys the index gives it).
    """

    def __init__(self, root: Path):
        self.root = root
        index_path = root / INDEX_FILE
        single = root / SINGLE_FILE
        if index_path.is_file():
            self.index_path = index_path
            self.weight_map = self._read_index(index_path)
        elif single.is_file():
            self.index_path = single
            self.weight_map = {key: SINGLE_FILE for key in self._header(single)}
        else:
            raise CheckpointError(root, None, f"no {INDEX_FILE} and no {SINGLE_FILE}: not a safetensors checkpoint")
        for name in sorted(set(self.weight_map.values())):
            if not (root / name).is_file():
                first = next(key for key, file in self.weight_map.items() if file == name)
                raise CheckpointError(root / name, first, f"shard named by {INDEX_FILE} is missing")
        self._headers: dict[str, dict[str, TensorInfo]] = {}

    def _read_index(self, path: Path) -> dict[str, str]:
        index = read_json(path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(path, "weight_map", "missing or empty")
        for key, file in weight_map.items():
            if not isinstance(file, str) or Path(file).name != file:
                raise CheckpointError(path, key, f"names {file!r}, expected a file name beside the index")
        return dict(weight_map)

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def files(self) -> list[Path]:
        return [self.root / name for name in sorted(set(self.weight_map.values()))]

    def file_of(self, key: str) -> Path:
        return self.root / self.weight_map[key]

    def _header(self, path: Path) -> dict[str, TensorInfo]:
        try:
            with safe_open(str(path), framework="pt") as handle:
                infos = {}
                for key in handle.keys():
                    view = handle.get_slice(key)
                    dtype = SAFETENSORS_DTYPES.get(view.get_dtype())
                    if dtype is None:
                        raise CheckpointError(path, key, f"has unsupported dtype {view.get_dtype()}")
                    infos[key] = TensorInfo(path, key, tuple(view.get_shape()), dtype)
                return infos
        except SafetensorError as err:
            raise CheckpointError(path, None, f"is not a readable safetensors file (truncated or corrupt: {err})") from None

    def header(self, path: Path) -> dict[str, TensorInfo]:
        """Every tensor of one shard, checked against the index."""
        name = path.name
        if name not in self._headers:
            infos = self._header(path)
            for key in infos:
                if self.weight_map.get(key) != name:
                    raise CheckpointError(path, key, f"is in this shard but {INDEX_FILE} does not place it here")
            for key, file in self.weight_map.items():
                if file == name and key not in infos:
                    raise CheckpointError(path, key, f"named by {INDEX_FILE} but not in this shard")
            self._headers[name] = infos
        return self._headers[name]

    def infos(self, keys: Iterable[str]) -> dict[str, TensorInfo]:
        """Header facts of `keys` (all must be in the index); opens only the shards that hold them."""
        result: dict[str, TensorInfo] = {}
        for key in keys:
            result[key] = self.header(self.file_of(key))[key]
        return result

    def read(self, keys: Iterable[str]) -> Iterable[tuple[str, torch.Tensor]]:
        """(key, tensor) for `keys`, shard by shard; each tensor is read once and handed over."""
        by_file: dict[str, list[str]] = {}
        for key in keys:
            by_file.setdefault(self.weight_map[key], []).append(key)
        for name, file_keys in by_file.items():
            path = self.root / name
            try:
                with safe_open(str(path), framework="pt") as handle:
                    for key in file_keys:
                        yield key, handle.get_tensor(key)
            except SafetensorError as err:
                raise CheckpointError(path, None, f"could not be read ({err})") from None

    def memory_map(self, key: str) -> torch.Tensor:
        """One tensor mapped from disk copy-on-write: rows are paged in only when indexed."""
        info = self.infos([key])[key]
        storage = _NUMPY_STORAGE.get(info.dtype)
        if storage is None:
            raise CheckpointError(info.path, key, f"dtype {info.dtype} cannot be memory-mapped")
        with open(info.path, "rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(header_len))
        begin, _ = header[key]["data_offsets"]
        array = np.memmap(info.path, dtype=storage, mode="c", offset=8 + header_len + begin, shape=info.shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tensor = torch.from_numpy(array)
        return tensor.view(info.dtype) if info.dtype == torch.bfloat16 else tensor
