"""Reading a Realtime connection (the official OpenAI client's) in tests."""

from __future__ import annotations

import asyncio
import base64

# Generous: a reply on a loaded 2-core machine; the tests assert on flow, never on time.
EVENT_TIMEOUT_S = 120.0


async def events_until(connection, last: str, timeout: float = EVENT_TIMEOUT_S, on_event=None) -> list:
    """Every event up to and including the first of type `last`."""
    seen = []
    while True:
        event = await asyncio.wait_for(connection.recv(), timeout)
        seen.append(event)
        if on_event is not None:
            await on_event(event)
        if event.type == last:
            return seen


def of_type(events: list, kind: str) -> list:
    return [event for event in events if event.type == kind]


def audio_bytes(events: list, kind: str) -> bytes:
    return b"".join(base64.b64decode(event.delta) for event in of_type(events, kind))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
