"""Timing helpers shared by the fakes: sleeping to absolute times (no drift over a long reply), and an
optional concurrency bound that models a saturated engine (work queues behind it)."""

from __future__ import annotations

import asyncio
import contextlib
import time


async def sleep_until(deadline: float) -> None:
    """Sleeps to `deadline` (time.perf_counter()); late wake-ups do not push later deadlines back."""
    delay = deadline - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


class Slots:
    """At most `limit` holders at once (0 = unbounded); `hold()` yields the time spent waiting, in ns."""

    def __init__(self, limit: int):
        self._semaphore = asyncio.Semaphore(limit) if limit > 0 else None

    @contextlib.asynccontextmanager
    async def hold(self):
        started = time.perf_counter_ns()
        if self._semaphore is None:
            yield 0
            return
        async with self._semaphore:
            yield time.perf_counter_ns() - started
