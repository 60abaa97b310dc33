"""Waits the SDK tests and the fault suite share: the next event of a kind, and a session's turn lock gone."""

from __future__ import annotations

import asyncio

import sdk


async def next_of(conv: sdk.Conversation, kind: type, timeout: float = 90.0):
    while True:
        event = await conv.next_event(timeout)
        if isinstance(event, kind):
            return event


async def wait_idle(client: sdk.AsyncClient, session_id: str, timeout_s: float = 30.0) -> None:
    """The session's turn lock is gone (a killed orchestrator leaves it to expire)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (await client.get_session(session_id)).running_turn_id:
        assert asyncio.get_running_loop().time() < deadline, "the turn lock never expired"
        await asyncio.sleep(0.2)
