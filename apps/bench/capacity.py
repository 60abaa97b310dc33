"""`vita bench --capacity`: the largest number of concurrent sessions the stack serves glitch-free.

A concurrency passes when every measured turn completed, no listener's playback ran dry (0 underruns,
apps.bench.stats.TurnSample.playback) and the p90 time to first audio is within the bound. The ramp runs
the levels in order and stops at the first that fails; then it bisects between the last level that passed
and that one. The capacity is the last concurrency that passed (0 when even one session fails).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

DEFAULT_RAMP = "1,2,4,8,12,16,24,32"
DEFAULT_TTFA_P90_MS = 1000.0


def verdict(run: dict, ttfa_p90_bound_ms: float) -> dict:
    """Why a run passes or fails the glitch-free criterion."""
    ttfa_p90 = (run.get("ttfa_ms") or {}).get("p90")
    reasons = []
    if run["failed_turns"] or not run["turns"]:
        reasons.append(f"{run['failed_turns']} failed turns of {run['failed_turns'] + run['turns']}")
    if run["underruns_total"]:
        reasons.append(f"{run['underruns_total']} underruns in {run['turns_with_underruns']} turns")
    if ttfa_p90 is None:
        reasons.append("no audio")
    elif ttfa_p90 > ttfa_p90_bound_ms:
        reasons.append(f"TTFA p90 {ttfa_p90:.0f} ms > {ttfa_p90_bound_ms:.0f} ms")
    return {
        "concurrency": run["concurrency"],
        "passed": not reasons,
        "why_not": "; ".join(reasons) or None,
        "underruns": run["underruns_total"],
        "ttfa_p50_ms": (run.get("ttfa_ms") or {}).get("p50"),
        "ttfa_p90_ms": ttfa_p90,
        "failed_turns": run["failed_turns"],
    }


async def ramp(levels: list[int], measure: Callable[[int], Awaitable[dict]], ttfa_p90_bound_ms: float,
               bisect: bool = True) -> tuple[list[dict], dict]:
    """Runs `measure(concurrency)` up the ramp (then bisecting); returns every run, in the order run,
    and the capacity object of the JSON document."""
    runs: list[dict] = []
    tried: list[dict] = []

    async def attempt(concurrency: int) -> bool:
        run = await measure(concurrency)
        runs.append(run)
        tried.append(verdict(run, ttfa_p90_bound_ms))
        print(f"capacity: {concurrency} sessions "
              f"{'pass' if tried[-1]['passed'] else 'FAIL (' + tried[-1]['why_not'] + ')'}", flush=True)
        return tried[-1]["passed"]

    passed, failed = 0, None
    for level in sorted(set(levels)):
        if await attempt(level):
            passed = level
        else:
            failed = level
            break
    while bisect and failed is not None and failed - passed > 1:
        middle = (passed + failed) // 2
        if await attempt(middle):
            passed = middle
        else:
            failed = middle
    capacity = {
        "sessions": passed,
        "criterion": f"every turn completes, 0 playback underruns, TTFA p90 <= {ttfa_p90_bound_ms:.0f} ms",
        "ttfa_p90_bound_ms": ttfa_p90_bound_ms,
        "first_failing": failed,
        "ramp_exhausted": failed is None,  # every level passed: the capacity is at least `sessions`
        "tried": tried,
    }
    return runs, capacity


def format_capacity(capacity: dict) -> str:
    lines = [f"capacity: {capacity['sessions']} concurrent sessions glitch-free ({capacity['criterion']})"
             + (" — every level of the ramp passed" if capacity["ramp_exhausted"] else "")]
    for row in capacity["tried"]:
        p50, p90 = row["ttfa_p50_ms"], row["ttfa_p90_ms"]
        lines.append(f"  {row['concurrency']:>4} sessions: {'pass' if row['passed'] else 'fail'}; underruns "
                     f"{row['underruns']}, TTFA p50 {p50 if p50 is None else round(p50)} ms, p90 "
                     f"{p90 if p90 is None else round(p90)} ms" + (f" ({row['why_not']})" if row["why_not"] else ""))
    return "\n".join(lines)
