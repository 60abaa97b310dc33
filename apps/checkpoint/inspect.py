"""`vita checkpoint inspect DIR`: what a checkpoint holds and whether each service can serve it.

Reads configs and tensor headers only (safetensors headers; `.pt` files memory-mapped), never weight data,
so it is quick even on the full-size release. Prints the files found, the config values each service
would use, tensors per module with their dtypes, and for each service either what it would consume (and
what it would deliberately leave unused) or the exact `CheckpointError` it would stop with.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

import torch

from shared.checkpoint import layout
from shared.checkpoint.errors import CheckpointError
from shared.checkpoint.files import ShardedSafetensors, TensorInfo, flatten_state_dict, load_pt
from shared.checkpoint.strict import ServicePlan, tensor_infos
from apps.checkpoint.synth_configs import SYNTHETIC_MARKER

_LAYER_INDEX = re.compile(r"\.\d+(?=\.|$)")


def module_group(key: str) -> str:
    """A key's module for the tensor summary: layer indices folded (`model.layers.*`), leaf dropped."""
    for prefix, name in (
        (layout.VISION_PREFIX, "vision_tower."), (layout.PROJECTOR_PREFIX, "mm_projector."),
        (layout.AUDIO_PREFIX, "audio_encoder."),
    ):
        if key.startswith(prefix):
            key = name + key[len(prefix):]
    parts = _LAYER_INDEX.sub(".*", key).split(".")
    depth = 2 if "*" not in parts[:3] else parts.index("*") + 1
    return ".".join(parts[:depth])


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def tensor_table(infos: Iterable[TensorInfo]) -> list[str]:
    groups: dict[str, list[TensorInfo]] = defaultdict(list)
    for info in infos:
        groups[module_group(info.key)].append(info)
    lines = []
    for group, members in groups.items():
        params = sum(_numel(info.shape) for info in members)
        dtypes = ",".join(sorted({_dtype(info.dtype) for info in members}))
        lines.append(f"    {group:<44} {len(members):>5} tensors {params / 1e6:>10.2f} M  {dtypes}")
    return lines


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _pt_infos(path: Path) -> list[TensorInfo]:
    data = load_pt(path)
    if isinstance(data.get("model"), dict):
        data = data["model"]
    return list(tensor_infos(path, flatten_state_dict(path, {k: v for k, v in data.items() if isinstance(v, (dict, torch.Tensor))})).values())


def _section(lines: list[str], title: str) -> None:
    lines.extend(["", title])


def _try(lines: list[str], label: str, action: Callable[[], object]) -> object | None:
    try:
        return action()
    except CheckpointError as err:
        lines.append(f"  {label}: ERROR {err}")
        return None


def _files(root: Path, lines: list[str]) -> tuple[dict | None, ShardedSafetensors | None]:
    config = _try(lines, "config.json", lambda: layout.vita_config(root))
    if isinstance(config, dict) and config.get(SYNTHETIC_MARKER):
        lines.append(f"  SYNTHETIC checkpoint (vita checkpoint synth): {config[SYNTHETIC_MARKER]}")
    for name in layout.TOKENIZER_FILES:
        lines.append(f"  {name:<28} {'present' if (root / name).is_file() else 'absent'}")
    shards = _try(lines, "safetensors", lambda: ShardedSafetensors(root))
    if shards is not None:
        lines.append(f"  {shards.index_path.name:<28} {len(shards.keys())} tensors in {len(shards.files())} file(s)")
        for path in shards.files():
            lines.append(f"    {path.name:<26} {path.stat().st_size / 1e6:>10.1f} MB")
    if isinstance(config, dict):
        for label, find in (("InternViT dir", layout.vision_dir), ("audio-encoder dir", layout.audio_dir)):
            found = _try(lines, label, lambda find=find: find(root, config))
            if found is not None:
                lines.append(f"  {label:<28} {found}  ({', '.join(sorted(p.name for p in found.iterdir()))})")
    tts = _try(lines, "TTS dir", lambda: layout.tts_dir(root))
    if tts is not None:
        lines.append(f"  {'TTS dir':<28} {tts}")
    return (config if isinstance(config, dict) else None), shards


def _tensors(root: Path, config: dict | None, shards: ShardedSafetensors | None, lines: list[str]) -> None:
    if shards is not None:
        lines.append(f"  {shards.index_path.name}:")
        infos = _try(lines, "shard headers", lambda: [i for p in shards.files() for i in shards.header(p).values()])
        if infos:
            lines.extend(tensor_table(infos))
    sources: list[tuple[Path, str]] = []  # (file, what it is for)
    if config is not None:
        for find, name in ((layout.vision_dir, "model.safetensors"), (layout.audio_dir, layout.AUDIO_WEIGHTS_FILE)):
            try:
                sources.append((find(root, config) / name, "stand-alone copy, overridden by the shards: not read"))
            except CheckpointError:
                pass
    try:
        tts = layout.tts_dir(root)
        for sub in (layout.TTS_DECODER_DIR, layout.TTS_CODEC_DIR):
            sources.append((tts / sub / layout.TTS_WEIGHTS_FILE, "speech service"))
    except CheckpointError:
        pass
    for path, role in sources:
        if not path.is_file():
            lines.append(f"  {path}: not present")
            continue
        if path.suffix == ".safetensors":
            infos = _try(lines, str(path), lambda path=path: list(ShardedSafetensors(path.parent).header(path).values()))
        else:
            infos = _try(lines, str(path), lambda path=path: _pt_infos(path))
        if infos is not None:
            lines.append(f"  {path} ({role}):")
            lines.extend(tensor_table(infos))


def _unused_summary(unused: list[TensorInfo]) -> str:
    counts = Counter(module_group(info.key) for info in unused)
    return ", ".join(f"{group} ({count})" for group, count in counts.items())


def _embedding_rows(root: Path, service: str, plan: ServicePlan) -> int | None:
    """The embedding rows the service checks its tokenizer against: the LLM's config vocab_size, the speech
    service's the rows of the shared embed_tokens table it maps."""
    if service == "llm":
        return plan.dims["llm"].vocab_size
    if service == "speech":
        key = layout.EMBED_TOKENS_KEY
        return ShardedSafetensors(root).infos([key])[key].shape[0]
    return None


def _tokenizer(root: Path, service: str, plan: ServicePlan) -> str | None:
    """The tokenizer line of a service that loads one, by the very function that service loads it with;
    raises the CheckpointError it would stop with."""
    if service not in ("llm", "speech"):
        return None
    tokenizer = layout.checkpoint_tokenizer(root, embedding_rows=_embedding_rows(root, service, plan))
    files = " + ".join(path.name for path in layout.tokenizer_files(root))
    return f"tokenizer: {tokenizer.vocab_size} tokens from {files}"


def _services(root: Path, lines: list[str]) -> bool:
    from services.audio.checkpoint import check_audio_checkpoint
    from services.llm.checkpoint import check_llm_checkpoint
    from services.speech.checkpoint import check_speech_checkpoint
    from services.vision.checkpoint import check_vision_checkpoint

    all_ok = True
    for check in (check_llm_checkpoint, check_speech_checkpoint, check_vision_checkpoint, check_audio_checkpoint):
        name = check.__name__.removeprefix("check_").removesuffix("_checkpoint")
        try:
            plan: ServicePlan = check(root)
            tokenizer_line = _tokenizer(root, name, plan)
        except CheckpointError as err:
            all_ok = False
            lines.append(f"  {name:<7} CANNOT SERVE: {err}")
            continue
        params = sum(_numel(info.shape) for info in plan.consumed)
        lines.append(f"  {name:<7} OK: {len(plan.consumed)} tensors, {params / 1e6:.2f} M parameters")
        for module, dims in plan.dims.items():
            values = ", ".join(f"{k}={v}" for k, v in asdict(dims).items())
            lines.append(f"          {module}: {values}")
        if tokenizer_line:
            lines.append(f"          {tokenizer_line}")
        if plan.unused:
            lines.append(f"          known-unused, not loaded: {_unused_summary(plan.unused)}")
        for note in plan.notes:
            lines.append(f"          note: {note}")
    return all_ok


def _cmvn(root: Path, config: dict | None, shards: ShardedSafetensors | None, lines: list[str]) -> None:
    keys = [layout.AUDIO_PREFIX + "encoder.global_cmvn." + name for name in ("mean", "istd")]
    if config is None or shards is None or not all(k in shards.weight_map for k in keys):
        return
    try:
        from services.audio.checkpoint import json_cmvn

        bins = shards.infos(keys)[keys[0]].shape[0]
        json_values = json_cmvn(layout.audio_dir(root, config) / layout.AUDIO_CMVN_FILE, bins)
        shard_values = dict(shards.read(keys))
        for key, reference in zip(keys, json_values):
            diff = (shard_values[key].float() - reference).abs().max().item()
            lines.append(f"  {key.rsplit('.', 1)[-1]}: shards (served) vs JSON global_cmvn: max abs diff {diff:.3g}")
    except CheckpointError as err:
        lines.append(f"  CMVN comparison skipped: {err}")


def inspect_checkpoint(root: Path) -> tuple[str, bool]:
    """The report, and whether every service can serve the checkpoint."""
    root = Path(root)
    lines = [f"checkpoint {root}"]
    _section(lines, "files:")
    config, shards = _files(root, lines)
    if config is not None:
        _section(lines, "config.json:")
        for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "torch_dtype",
                    layout.VISION_TOWER_KEY, layout.AUDIO_ENCODER_KEY, "mm_projector_type", "mm_hidden_size"):
            lines.append(f"  {key:<28} {config.get(key)!r}")
    _section(lines, "tensors per module:")
    _tensors(root, config, shards, lines)
    _section(lines, "services:")
    ok = _services(root, lines)
    _section(lines, "CMVN:")
    _cmvn(root, config, shards, lines)
    return "\n".join(lines), ok
