"""Hands events from an engine's worker thread to the asyncio task that serves the call."""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class EngineEvents(Generic[T]):
    """A queue written from any thread (`push`) and read on the event loop that created it."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[T] = asyncio.Queue()

    def push(self, event: T) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    async def get(self) -> T:
        return await self._queue.get()

    def drain(self) -> list[T]:
        """Events already queued, without waiting: lets a servicer merge a burst into one message."""
        events = []
        while not self._queue.empty():
            events.append(self._queue.get_nowait())
        return events
