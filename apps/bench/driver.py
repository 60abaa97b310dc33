"""Runs N session drivers through the same phases, distributed or in-process: every session opens, runs
its warmup turns, then (all together, after the slowest warmup) its measured turns; the measured window
is the wall time of that second phase."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from apps.bench.stats import TurnSample
from apps.bench.workload import BenchTurn, SessionScript, Workload


class SessionDriver(Protocol):
    async def open(self) -> None: ...

    async def turn(self, index: int, turn: BenchTurn, warmup: bool) -> TurnSample: ...

    async def close(self) -> None: ...


async def _run_turns(driver: SessionDriver, script: SessionScript, indices: range, warmup: bool) -> list[TurnSample]:
    return [await driver.turn(i, script.turns[i], warmup) for i in indices]


async def run_phases(workload: Workload, drivers: list[SessionDriver]) -> tuple[list[TurnSample], float]:
    """Returns every turn's sample (warmup ones flagged) and the measured window in seconds."""
    opened: list[SessionDriver] = []
    try:
        for driver in drivers:
            await driver.open()
            opened.append(driver)
        scripts = workload.sessions
        total = len(scripts[0].turns)
        warm = await asyncio.gather(
            *(_run_turns(d, s, range(workload.warmup), True) for d, s in zip(drivers, scripts))
        )
        started = time.perf_counter()
        measured = await asyncio.gather(
            *(_run_turns(d, s, range(workload.warmup, total), False) for d, s in zip(drivers, scripts))
        )
        wall_s = time.perf_counter() - started
    finally:
        for driver in opened:
            await driver.close()
    return [sample for group in (*warm, *measured) for sample in group], wall_s
