"""The events no turn handle claims, waiting for `Conversation.events()`. Bounded: past the bound the
oldest are dropped (and counted), so a caller that only uses `ask()` never stalls the stream."""

from __future__ import annotations

import asyncio
import collections
import logging

from sdk.events import Event

log = logging.getLogger(__name__)

MAX_BUFFERED_EVENTS = 10_000


class EventInbox:
    def __init__(self, session_id: str, limit: int = MAX_BUFFERED_EVENTS):
        self._session_id = session_id
        self._events: collections.deque[Event] = collections.deque()
        self._grew = asyncio.Event()
        self._limit = limit
        self.dropped = 0

    def put(self, event: Event) -> None:
        if len(self._events) >= self._limit:
            self._events.popleft()
            self.dropped += 1
            if self.dropped == 1:
                log.warning("session %s: events are not read; dropping the oldest", self._session_id)
        self._events.append(event)
        self._grew.set()

    def __len__(self) -> int:
        return len(self._events)

    def pop(self) -> Event:
        return self._events.popleft()

    async def wait(self, timeout: float | None) -> None:
        """Until an event is there (TimeoutError after `timeout`)."""
        while not self._events:
            self._grew.clear()
            await asyncio.wait_for(self._grew.wait(), timeout)
