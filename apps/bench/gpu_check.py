"""`vita gpu-check`: one command that tells whether a CUDA machine serves VITA-1.5 at speed.

It starts the whole stack on this machine with the full preset (seeded random weights: no checkpoint
needed, the same shapes and compute as VITA-1.5) on CUDA, runs text turns with speech replies at
concurrency 1, 8 and 32, and prints one line per concurrency: time to first text and to first audio
(p50/p90, ms), the speech real-time factor (p50) and the LLM's decode speed (per reply, p50, and the
whole stack's tokens per second). It keeps to a time budget (8 minutes): start-up, then each level, and a
level that would not fit is skipped and reported. Exit 0 when every level ran with no failed turn within
the budget; 1 otherwise; 2 when there is no CUDA device (said in one line).

The same logic runs on CPU with `--device cpu --preset tiny` (tests/bench/test_gpu_check.py), and against
an already running stack with `--address`. Expected output: docs/PERFORMANCE.md#gpu-check.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 8 * 60
CONCURRENCIES = "1,8,32"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="where the model services run (cpu: to try the command without a GPU)")
    parser.add_argument("--preset", default="full", choices=("tiny", "full"))
    parser.add_argument("--address", default=None, help="measure this running stack instead of starting one")
    parser.add_argument("--concurrency", default=CONCURRENCIES, help="concurrent sessions per level (default %(default)s)")
    parser.add_argument("--turns", type=int, default=3, help="measured turns per session and level")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured turns per session first (compiles, caches)")
    parser.add_argument("--reply-tokens", type=int, default=64, help="reply length (random weights run to it)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="the whole check's time limit")
    parser.add_argument("--torch-threads", type=int, default=4, help="CPU threads per model service")
    parser.add_argument("--log-dir", default=None, help="service logs (default: a new temporary directory)")
    parser.add_argument("--json", type=Path, default=None, help="write every level's full metrics here")


def cuda_problem() -> str | None:
    """Why the model services could not run on CUDA here, or None when they can."""
    import torch

    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build: install the CUDA wheel (see docs/DEPLOY.md#image)"
    if not torch.cuda.is_available():
        return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no CUDA device: check `nvidia-smi`, "
                "the driver, and CUDA_VISIBLE_DEVICES")
    return None


def _levels(spec: str) -> list[int]:
    try:
        levels = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"--concurrency: expected integers like 1,8,32, got {spec!r}") from None
    if not levels or min(levels) < 1:
        raise SystemExit("--concurrency: every value must be >= 1")
    return levels


def _p(stats: dict | None, q: str) -> float | None:
    return stats.get(q) if stats else None


def summary_row(run: dict) -> dict:
    """The figures the check reports for one level (ms, ratio, tokens/s); None where none was measured."""
    return {
        "concurrency": run["concurrency"],
        "turns": run["turns"],
        "failed_turns": run["failed_turns"],
        "ttft_p50_ms": _p(run["ttft_ms"], "p50"),
        "ttft_p90_ms": _p(run["ttft_ms"], "p90"),
        "ttfa_p50_ms": _p(run["ttfa_ms"], "p50"),
        "ttfa_p90_ms": _p(run["ttfa_ms"], "p90"),
        "rtf_p50": _p(run["rtf"], "p50"),
        "llm_tokens_per_s_per_reply_p50": _p(run["llm_tokens_per_s"], "p50"),
        "llm_tokens_per_s_total": run["throughput"]["llm_tokens_per_s"],
    }


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(rows: list[dict]) -> str:
    lines = [f"{'conc':>5}{'turns':>7}{'failed':>7}{'TTFT p50':>10}{'p90':>8}{'TTFA p50':>10}{'p90':>8}"
             f"{'RTF p50':>9}{'tok/s/reply':>13}{'tok/s total':>13}"]
    for row in rows:
        lines.append(
            f"{row['concurrency']:>5}{row['turns']:>7}{row['failed_turns']:>7}"
            f"{_num(row['ttft_p50_ms']):>10}{_num(row['ttft_p90_ms']):>8}"
            f"{_num(row['ttfa_p50_ms']):>10}{_num(row['ttfa_p90_ms']):>8}"
            f"{_num(row['rtf_p50'], 3):>9}{_num(row['llm_tokens_per_s_per_reply_p50'], 1):>13}"
            f"{_num(row['llm_tokens_per_s_total'], 1):>13}"
        )
    return "\n".join(lines)


async def measure_levels(address: str, args, levels: list[int], deadline: float) -> tuple[list[dict], list[int]]:
    """Runs each level against `address` while the budget lasts; (full run metrics, levels skipped)."""
    from apps.bench.client_runner import run_distributed
    from apps.bench.report import run_result
    from apps.bench.stats import run_metrics
    from apps.bench.workload import build_workload

    runs, skipped, last_s = [], [], 0.0
    for concurrency in levels:
        # A level takes about as long as the one before (sessions run side by side): skip what cannot fit.
        if time.monotonic() + last_s > deadline:
            skipped.append(concurrency)
            continue
        workload = build_workload(sessions=concurrency, turns=args.turns, warmup=args.warmup,
                                  reply_tokens=args.reply_tokens, seed=concurrency, mix="text")
        started, load_before = time.monotonic(), list(os.getloadavg())
        remaining = max(1.0, deadline - started)
        samples, wall_s = await run_distributed(address, workload, turn_timeout_s=remaining)
        runs.append(run_result(concurrency, run_metrics(samples, wall_s), load_before))
        last_s = time.monotonic() - started
        row = summary_row(runs[-1])
        print(f"  concurrency {concurrency}: {row['turns']} turns ({row['failed_turns']} failed) in {last_s:.0f} s",
              flush=True)
    return runs, skipped


def run(args) -> int:
    from apps.bench.report import machine_info, write_json

    started = time.monotonic()
    deadline = started + args.budget_s
    levels = _levels(args.concurrency)
    if args.device == "cuda" and args.address is None:
        problem = cuda_problem()
        if problem is not None:
            print(f"vita gpu-check needs a CUDA GPU: {problem}. (`--device cpu --preset tiny` runs the same "
                  "check on CPU.)", file=sys.stderr)
            return 2
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    machine = machine_info()
    print(f"vita gpu-check: preset {args.preset} on {args.device}, concurrency {','.join(map(str, levels))}, "
          f"{args.turns} turns/session (+{args.warmup} warmup), {args.reply_tokens}-token replies, "
          f"budget {args.budget_s:.0f} s; GPUs: {', '.join(machine['gpus']) or 'none'}", flush=True)
    load_s = None
    if args.address is not None:
        runs, skipped = asyncio.run(measure_levels(args.address, args, levels, deadline))
    else:
        from apps.launcher import Stack, StackConfig

        log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="vita-gpu-check-"))
        config = StackConfig(
            preset=args.preset, log_dir=log_dir, torch_threads=args.torch_threads,
            env={"VITA_DEVICE": args.device}, start_timeout_s=max(1.0, args.budget_s * 0.6),
        )
        print(f"starting the {args.preset} stack on {args.device} (logs in {log_dir})...", flush=True)
        try:
            with Stack(config) as stack:
                load_s = time.monotonic() - started
                print(f"  stack up in {load_s:.0f} s", flush=True)
                runs, skipped = asyncio.run(measure_levels(stack.address, args, levels, deadline))
        except RuntimeError as error:  # a service exited or did not get ready in time (its log says why)
            print(f"vita gpu-check: the stack did not start: {error} (logs in {log_dir})", file=sys.stderr)
            return 1
    elapsed = time.monotonic() - started
    rows = [summary_row(run) for run in runs]
    print(format_table(rows))
    print(f"total {elapsed:.0f} s of a {args.budget_s:.0f} s budget"
          + (f" (stack start {load_s:.0f} s)" if load_s is not None else ""))
    if args.json:
        write_json(args.json, {"preset": args.preset, "device": args.device, "levels": rows, "runs": runs,
                               "skipped": skipped, "stack_start_s": load_s, "elapsed_s": elapsed,
                               "budget_s": args.budget_s, "machine": machine})
        print(f"results written to {args.json}")
    problems = []
    if skipped:
        problems.append(f"levels {','.join(map(str, skipped))} did not fit in the budget")
    if any(row["failed_turns"] or not row["turns"] for row in rows):
        problems.append("some turns failed (see the service logs)")
    if elapsed > args.budget_s:
        problems.append(f"took {elapsed:.0f} s, over the {args.budget_s:.0f} s budget")
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0
