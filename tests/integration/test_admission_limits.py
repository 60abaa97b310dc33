"""Per-tenant limits through the public API: CreateSession past the tenant's session limit, and a turn past
its turns per minute, are refused with RESOURCE_EXHAUSTED and a retry hint; deleting a session frees its
place; the session that was refused a turn is left as it was."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from shared.retry_hint import retry_after_ms
from tests.client import Client
from vita.assistant.v1 import assistant_pb2

RESOURCE_EXHAUSTED = 8


async def test_tenant_limits_on_sessions_and_turns(stack):
    orchestrator = await asyncio.to_thread(
        stack.spawn_orchestrator,
        {"VITA_ORCH_TENANT_MAX_SESSIONS": "2", "VITA_ORCH_TENANT_TURNS_PER_MINUTE": "2",
         "VITA_ORCH_API_KEYS": "key-a=tenant-limits-a,key-b=tenant-limits-b"},
    )
    try:
        async with Client(orchestrator.address, api_key="key-a") as client, \
                Client(orchestrator.address, api_key="key-b") as other:
            first = await client.create_session(max_reply_tokens=4, speech_output=False)
            await client.create_session(max_reply_tokens=4, speech_output=False)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.create_session()
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "2 sessions, its limit" in refused.value.details()
            assert retry_after_ms(refused.value.trailing_metadata()) > 0
            await other.create_session()  # another tenant has its own count

            async with client.converse(first) as conv:
                for text in ("One.", "Two."):
                    turn = await conv.turn(text)
                    assert turn.completed.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED
                third = await conv.turn("Three.")
            assert [e.code for e in third.errors] == [RESOURCE_EXHAUSTED]
            assert "2 turns in the last minute" in third.errors[0].message and "retry in" in third.errors[0].message
            session = await client.get_session(first)
            assert [t.user_text for t in session.history] == ["One.", "Two."] and session.running_turn_id == ""

            await client.sdk.delete_session(first)
            await client.create_session()  # the deleted session's place is free again
    finally:
        await asyncio.to_thread(orchestrator.stop, 10)
