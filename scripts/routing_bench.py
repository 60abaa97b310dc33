"""Session-affine LLM routing against round robin, in one run on one stack.

Starts a local stack with 2 LLM and 2 speech replicas (apps.launcher, tiny preset by default) and two
orchestrators over the same Redis and replicas: one with VITA_ORCH_LLM_ROUTING=affine, one with
round_robin. Runs `vita bench` against each in turn (the same workload and seed, so the same prompts),
alternating the two policies `--rounds` times, and prints per policy: prompt tokens prefilled and served
from the KV cache per warm turn, the cache hit rate (cached / (cached + prefilled) prompt tokens), and
TTFT p50. Every measured turn is warm: `vita bench --warmup 1` runs each session's first turn unmeasured.

    python scripts/routing_bench.py --concurrency 4 --turns 8 --reply-tokens 32 --json routing.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apps.launcher import Stack, StackConfig  # noqa: E402

POLICIES = ("affine", "round_robin")


def bench(address: str, args, out: Path) -> dict:
    command = [sys.executable, "-m", "apps.cli", "bench", "--address", address, "--concurrency", str(args.concurrency),
               "--turns", str(args.turns), "--warmup", "1", "--reply-tokens", str(args.reply_tokens),
               "--seed", str(args.seed), "--json", str(out)]
    if args.no_speech:
        command.append("--no-speech")
    subprocess.run(command, check=True, stdout=sys.stderr)
    return json.loads(out.read_text())["runs"][0]


def merge(runs: list[dict]) -> dict:
    """Token counts weighted by turns (means → totals), TTFT p50 of each run averaged."""
    turns = sum(run["turns"] for run in runs)
    cached = sum(run["cached_tokens"]["mean"] * run["turns"] for run in runs)
    prefilled = sum(run["prefilled_tokens"]["mean"] * run["turns"] for run in runs)
    return {
        "turns": turns,
        "failed_turns": sum(run["failed_turns"] for run in runs),
        "prefilled_per_turn": prefilled / turns,
        "cached_per_turn": cached / turns,
        "hit_rate": cached / (cached + prefilled) if cached + prefilled else None,
        "ttft_p50_ms": sum(run["ttft_ms"]["p50"] for run in runs) / len(runs),
        "ttfa_p50_ms": (sum(run["ttfa_ms"]["p50"] for run in runs) / len(runs)) if all(run["ttfa_ms"] for run in runs) else None,
        "turns_per_s": sum(run["throughput"]["turns_per_s"] for run in runs) / len(runs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=("tiny", "full"))
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--turns", type=int, default=8, help="measured (warm) turns per session")
    parser.add_argument("--reply-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2, help="affine then round robin, this many times")
    parser.add_argument("--no-speech", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vita-routing-"))
    config = StackConfig(preset=args.preset, services=("llm", "speech"), replicas={"llm": 2, "speech": 2},
                         log_dir=work / "logs")
    print(f"starting the {args.preset} stack: 2 llm + 2 speech replicas (logs in {work / 'logs'})", file=sys.stderr)
    results: dict[str, list[dict]] = {policy: [] for policy in POLICIES}
    with Stack(config) as stack:
        # The stack's own orchestrator is affine (the default); a second one routes the LLM round robin.
        addresses = {"affine": stack.address}
        round_robin = stack.spawn_orchestrator({"VITA_ORCH_LLM_ROUTING": "round_robin"})
        try:
            addresses["round_robin"] = round_robin.address
            for index in range(args.rounds):
                for policy in POLICIES:
                    print(f"round {index + 1}: {policy}", file=sys.stderr)
                    results[policy].append(bench(addresses[policy], args, work / f"{policy}-{index}.json"))
        finally:
            round_robin.stop(10)
    summary = {policy: merge(runs) for policy, runs in results.items()}
    print(f"{'policy':<12} {'warm turns':>10} {'prefilled/turn':>15} {'cached/turn':>12} {'hit rate':>9} "
          f"{'TTFT p50 ms':>12} {'TTFA p50 ms':>12}")
    for policy, row in summary.items():
        ttfa = f"{row['ttfa_p50_ms']:.0f}" if row["ttfa_p50_ms"] is not None else "-"
        print(f"{policy:<12} {row['turns']:>10} {row['prefilled_per_turn']:>15.1f} {row['cached_per_turn']:>12.1f} "
              f"{row['hit_rate']:>9.1%} {row['ttft_p50_ms']:>12.0f} {ttfa:>12}")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "summary": summary,
                                         "runs": results}, indent=2))
    return 1 if any(row["failed_turns"] for row in summary.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
