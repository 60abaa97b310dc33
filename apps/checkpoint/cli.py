"""`vita checkpoint inspect DIR` and `vita checkpoint synth DIR --preset tiny|full`."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_inspect(args: argparse.Namespace) -> int:
    from apps.checkpoint.inspect import inspect_checkpoint

    report, ok = inspect_checkpoint(Path(args.dir))
    print(report)
    return 0 if ok else 1


def cmd_synth(args: argparse.Namespace) -> int:
    from apps.checkpoint.synth import synthesize
    from shared.presets import get_preset

    preset = get_preset(args.preset)
    max_bytes = int(args.max_shard_mb * 1024 * 1024) if args.max_shard_mb else None
    print(f"writing a synthetic {preset.name} checkpoint (seeded RANDOM weights, official layout) to {args.dir} ...", flush=True)
    result = synthesize(Path(args.dir), preset, seed=args.seed, max_shard_bytes=max_bytes)
    print(f"{len(result.files)} files, {result.parameters / 1e6:.1f} M parameters in the VITA shards")
    print(f"serve it: VITA_CHECKPOINT={result.root} vita up --preset {preset.name}")
    return 0


def add_parser(sub) -> None:
    """Registers `checkpoint` with its two subcommands on the `vita` parser's subparsers."""
    checkpoint = sub.add_parser("checkpoint", help="inspect or synthesize an official-layout checkpoint")
    actions = checkpoint.add_subparsers(dest="checkpoint_command", required=True)
    inspect = actions.add_parser("inspect", help="files, tensors per module, config values, unused or missing tensors")
    inspect.add_argument("dir", help="the VITA-1.5 checkpoint directory")
    inspect.set_defaults(func=cmd_inspect)
    synth = actions.add_parser("synth", help="write seeded random weights in exactly the official layout")
    synth.add_argument("dir", help="directory to create (must be empty or absent)")
    synth.add_argument("--preset", default="tiny", choices=("tiny", "full"))
    synth.add_argument("--seed", type=int, default=None, help="weights seed (default: the preset's)")
    synth.add_argument("--max-shard-mb", type=float, default=None, help="safetensors shard size (default: 64 MiB tiny, 5 GB full)")
    synth.set_defaults(func=cmd_synth)
