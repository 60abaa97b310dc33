"""`vita bench`: options and the run. Kept free of heavy imports so that building the CLI parser is cheap."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

DEFAULT_TORCH_THREADS = 1  # apps.launcher.StackConfig.torch_threads: what every service of `vita up` gets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("what is measured")
    where.add_argument("--address", default=None,
                       help="Assistant API of a running stack; default: start one here (apps.launcher.Stack)")
    where.add_argument("--api-key", default=None)
    where.add_argument("--inprocess", action="store_true",
                       help="the same workload through the same models in this process: no gRPC, no Redis")
    where.add_argument("--preset", default="tiny", choices=("tiny", "full"),
                       help="preset of the stack started here / of --inprocess (recorded with --address)")
    where.add_argument("--checkpoint", type=Path, default=None, help="official VITA-1.5 checkpoint directory")
    where.add_argument("--torch-threads", type=int, default=DEFAULT_TORCH_THREADS,
                       help="torch intra-op threads per model service (the stack started here) and per engine "
                            "(--inprocess); the launcher's default is 1")
    where.add_argument("--log-dir", default=None, help="service logs of the stack started here")
    load = parser.add_argument_group("workload")
    load.add_argument("--concurrency", default="1", help="concurrent sessions; a list (1,2,4,8) runs each in turn")
    load.add_argument("--turns", type=int, default=10, help="measured turns per session")
    load.add_argument("--warmup", type=int, default=1, help="turns per session run first and not measured")
    load.add_argument("--reply-tokens", type=int, default=64,
                      help="max_reply_tokens of every turn; random weights rarely emit <|im_end|>, so replies "
                           "run to this length")
    load.add_argument("--seed", type=int, default=0, help="scripts and per-turn seeds derive from it")
    load.add_argument("--mix", default="text", help="turn kinds of the built-in workload, e.g. text=3,spoken=1,image=1")
    load.add_argument("--workload", type=Path, default=None, help="scripted conversations (JSON/YAML); see "
                                                                  "apps/bench/workload.py")
    load.add_argument("--speech-end", default="commit", choices=("commit", "vad"),
                      help="spoken turns end by audio_commit (push-to-talk) or by the server's VAD")
    load.add_argument("--history-turns", type=int, default=None,
                      help="max_history_turns of every session (default: the server's, 8); 0 makes every turn's "
                           "prompt independent of earlier replies, so runs with different --reply-tokens send the "
                           "same prompts")
    load.add_argument("--no-speech", action="store_true",
                      help="text replies only (session speech_output off): isolates the LLM's batching")
    load.add_argument("--turn-timeout-s", type=float, default=600.0)
    ramp = parser.add_argument_group("capacity (apps/bench/capacity.py)")
    ramp.add_argument("--capacity", action="store_true",
                      help="ramp concurrency (--capacity-ramp, then bisect) to the largest number of sessions with "
                           "every turn completed, 0 playback underruns and TTFA p90 within --capacity-ttfa-p90-ms")
    ramp.add_argument("--capacity-ramp", default=None, help="concurrencies to try in order (default 1,2,4,8,12,16,24,32)")
    ramp.add_argument("--capacity-ttfa-p90-ms", type=float, default=None, help="bound on TTFA p90 (default 1000)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", type=Path, default=None, help="write the results here")
    out.add_argument("--plot", type=Path, default=None,
                     help="PNG of first-audio latency against concurrency (needs several concurrencies)")


def _concurrencies(spec: str) -> list[int]:
    try:
        values = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"--concurrency: expected integers like 1,2,4,8, got {spec!r}") from None
    if not values or min(values) < 1:
        raise SystemExit("--concurrency: every value must be >= 1")
    return values


async def collect(args, concurrencies: list[int], address: str | None) -> list[dict]:
    """Runs every concurrency in turn against `address` (or in-process with --inprocess); one result
    object per run, printed as it finishes."""
    from apps.bench.report import format_run, run_result
    from apps.bench.stats import run_metrics
    from apps.bench.workload import build_workload

    env = None
    if args.inprocess:
        from apps.bench.inprocess_runner import InProcessEnv, run_inprocess

        env = await asyncio.to_thread(InProcessEnv, args.preset, args.torch_threads, args.checkpoint)
        await env.start()
    else:
        from apps.bench.client_runner import run_distributed
    runs = []
    try:
        for concurrency in concurrencies:
            workload = build_workload(
                sessions=concurrency, turns=args.turns, warmup=args.warmup, reply_tokens=args.reply_tokens,
                seed=args.seed, mix=args.mix, workload_file=args.workload, speech_end=args.speech_end,
                speech_output=not args.no_speech, history_turns=args.history_turns,
            )
            load_before = list(os.getloadavg())
            if env is not None:
                samples, wall_s = await run_inprocess(env, workload)
            else:
                samples, wall_s = await run_distributed(address, workload, api_key=args.api_key,
                                                        turn_timeout_s=args.turn_timeout_s)
            run = run_result(concurrency, run_metrics(samples, wall_s), load_before)
            runs.append(run)
            print(format_run("inprocess" if args.inprocess else "distributed", args.preset, run), flush=True)
    finally:
        if env is not None:
            env.close()
    return runs


async def _collect_or_ramp(args, concurrencies: list[int], address: str | None) -> tuple[list[dict], dict | None]:
    if not args.capacity:
        return await collect(args, concurrencies, address), None
    from apps.bench.capacity import DEFAULT_RAMP, DEFAULT_TTFA_P90_MS, ramp

    async def measure(concurrency: int) -> dict:
        return (await collect(args, [concurrency], address))[0]

    levels = _concurrencies(args.capacity_ramp or DEFAULT_RAMP)
    return await ramp(levels, measure, args.capacity_ttfa_p90_ms or DEFAULT_TTFA_P90_MS)


def build_document(args, runs: list[dict], machine: dict) -> dict:
    from apps.bench.report import document

    settings = {
        "turns_per_session": args.turns, "warmup": args.warmup, "reply_tokens": args.reply_tokens,
        "seed": args.seed, "mix": args.mix, "workload": str(args.workload) if args.workload else None,
        "speech_end": args.speech_end, "speech_output": not args.no_speech,
        "history_turns": args.history_turns, "torch_threads": args.torch_threads,
        "address": args.address or ("in-process" if args.inprocess else "started here"),
    }
    return document("inprocess" if args.inprocess else "distributed", args.preset, runs, settings, machine)


def run(args) -> int:
    from apps.bench.report import format_summary, machine_info, write_json

    # The launcher gives every service this (apps.launcher); --inprocess gets it too, before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    concurrencies = _concurrencies(args.concurrency)
    mode = "inprocess" if args.inprocess else "distributed"
    if args.inprocess and args.address:
        raise SystemExit("--inprocess runs the models here: it takes no --address")
    machine = machine_info()
    print(f"vita bench: {mode}, preset {args.preset}, concurrency {','.join(map(str, concurrencies))}, "
          f"{args.turns} turns/session (+{args.warmup} warmup), reply {args.reply_tokens} tokens, seed {args.seed}; "
          f"{machine['cpu_model']}, {machine['cpus_usable']} CPUs, load {machine['load_average'][0]:.2f}", flush=True)
    capacity = None
    if args.inprocess or args.address:
        runs, capacity = asyncio.run(_collect_or_ramp(args, concurrencies, args.address))
    else:
        from apps.launcher import Stack, StackConfig

        log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="vita-bench-"))
        config = StackConfig(preset=args.preset, checkpoint=args.checkpoint, log_dir=log_dir,
                             torch_threads=args.torch_threads)
        print(f"starting the {args.preset} stack (logs in {log_dir})...", flush=True)
        with Stack(config) as stack:
            runs, capacity = asyncio.run(_collect_or_ramp(args, concurrencies, stack.address))
    if len(runs) > 1:
        print(format_summary(runs))
    doc = build_document(args, runs, machine)
    if capacity is not None:
        from apps.bench.capacity import format_capacity

        doc["capacity"] = capacity
        print(format_capacity(capacity))
    if args.json:
        write_json(args.json, doc)
        print(f"results written to {args.json}")
    if args.plot:
        if len(runs) < 2:
            print("--plot needs several concurrencies (e.g. --concurrency 1,2,4,8); no plot drawn", file=sys.stderr)
        else:
            from apps.bench.plot import plot_latency

            plot_latency(runs, args.plot, f"vita bench, {mode}, preset {args.preset}, reply {args.reply_tokens} tokens")
            print(f"plot written to {args.plot}")
    failed = sum(run["failed_turns"] for run in runs)
    if failed or not all(run["turns"] for run in runs):
        print(f"{failed} turns failed; {sum(r['turns'] for r in runs)} completed", file=sys.stderr)
        return 1
    return 0
