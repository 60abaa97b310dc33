"""The capacity ramp: pass/fail of one run, the ramp's stop, the bisection, the JSON object."""

from __future__ import annotations

import asyncio

from apps.bench.capacity import format_capacity, ramp, verdict


def _run(concurrency: int, *, underruns: int = 0, ttfa_p90: float = 500.0, failed: int = 0) -> dict:
    return {"concurrency": concurrency, "turns": 10 - failed, "failed_turns": failed, "underruns_total": underruns,
            "turns_with_underruns": min(underruns, 10), "ttfa_ms": {"p50": ttfa_p90 / 2, "p90": ttfa_p90}}


def test_a_run_passes_only_glitch_free_and_within_the_ttfa_bound() -> None:
    assert verdict(_run(4), 1000)["passed"]
    assert verdict(_run(4, underruns=1), 1000)["why_not"] == "1 underruns in 1 turns"
    assert "TTFA p90 1200 ms > 1000 ms" in verdict(_run(4, ttfa_p90=1200), 1000)["why_not"]
    assert not verdict(_run(4, failed=1), 1000)["passed"]


def test_the_ramp_stops_at_the_first_failure_and_bisects_to_the_largest_passing_level() -> None:
    measured: list[int] = []

    async def measure(concurrency: int) -> dict:  # glitch-free up to 10 sessions
        measured.append(concurrency)
        return _run(concurrency, underruns=0 if concurrency <= 10 else 3)

    runs, capacity = asyncio.run(ramp([1, 2, 4, 8, 16, 32], measure, 1000))
    assert measured == [1, 2, 4, 8, 16, 12, 10, 11]  # 32 never runs
    assert [run["concurrency"] for run in runs] == measured
    assert capacity["sessions"] == 10 and capacity["first_failing"] == 11 and not capacity["ramp_exhausted"]
    assert [row["passed"] for row in capacity["tried"]] == [True] * 4 + [False, False, True, False]
    assert "capacity: 10 concurrent sessions" in format_capacity(capacity)


def test_one_failing_session_is_a_capacity_of_zero_and_a_clean_ramp_says_so() -> None:
    async def failing(concurrency: int) -> dict:
        return _run(concurrency, ttfa_p90=5000)

    async def clean(concurrency: int) -> dict:
        return _run(concurrency)

    assert asyncio.run(ramp([1, 2], failing, 1000))[1]["sessions"] == 0
    capacity = asyncio.run(ramp([1, 2], clean, 1000))[1]
    assert capacity["sessions"] == 2 and capacity["ramp_exhausted"]
