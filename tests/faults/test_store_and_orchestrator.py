"""The stateful parts fail: the orchestrator is killed mid-turn (the SDK reconnects by itself to its
restart on the same port), and Redis is killed and restarted mid-conversation (append-only file on). Only
the turn in flight may be lost; the session, its history and the stream come back."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import sdk
from shared.retry_hint import retry_after_ms
from tests.sdk.waits import next_of, wait_idle
from tests.faults.aof_redis import AofRedis
from tests.faults.processes import assert_all_serving, kill9, port_of

FAST = sdk.ReconnectPolicy(initial_delay_s=0.1, max_delay_s=0.5, give_up_after_s=90.0)
CONFIG = sdk.SessionConfig(seed=11, max_reply_tokens=6)
CLEAR_STATUS_WITHIN_S = 30.0
# A killed orchestrator cannot release its turn lock: a short lifetime lets the next turn start soon.
SHORT_LOCK = {"VITA_ORCH_TURN_LOCK_TTL_S": "1.0"}




async def test_kill9_of_the_orchestrator_mid_turn_then_the_client_reconnects(fault_stack, ledger):
    orchestrator = await asyncio.to_thread(fault_stack.spawn_orchestrator, SHORT_LOCK)
    try:
        async with sdk.AsyncClient(orchestrator.address) as client:
            async with await client.start(CONFIG, reconnect=FAST) as conv:
                before = await conv.ask("Remember seven.", timeout=60)
                turn = await conv.send_text("Tell me a long story.", max_reply_tokens=400)
                async for event in turn.events():
                    if isinstance(event, sdk.TextDelta):
                        break
                await kill9(orchestrator)
                ledger.injected()
                with pytest.raises(sdk.TurnInterruptedError) as interrupted:
                    await turn.result(timeout=CLEAR_STATUS_WITHIN_S)
                assert "UNAVAILABLE" in interrupted.value.reason
                await assert_all_serving(*fault_stack.services.values())

                orchestrator = await asyncio.to_thread(
                    fault_stack.spawn_orchestrator, SHORT_LOCK, port_of(orchestrator.address)
                )
                reconnected = await next_of(conv, sdk.Reconnected)
                assert [t.turn_id for t in reconnected.session.history][:1] == [before.turn_id]
                await wait_idle(client, conv.session_id)
                after = await conv.ask("Which number?", timeout=60)
                assert after.outcome == "completed"
                stored = await ledger.check(client, conv.session_id, [before.turn_id, after.turn_id])
                assert stored[0] == before.turn_id and stored[-1] == after.turn_id
    finally:
        await asyncio.to_thread(orchestrator.stop, 10)


@pytest.fixture
def aof_redis(tmp_path):
    store = AofRedis(tmp_path).start()
    try:
        yield store
    finally:
        store.stop()


async def test_redis_restarted_mid_conversation_keeps_sessions_and_history(fault_stack, ledger, aof_redis):
    orchestrator = await asyncio.to_thread(fault_stack.spawn_orchestrator, {"VITA_ORCH_REDIS_URL": aof_redis.url})
    try:
        async with sdk.AsyncClient(orchestrator.address) as client:
            async with await client.start(CONFIG, reconnect=FAST) as conv:
                before = await conv.ask("Remember seven.", timeout=60)
                await asyncio.to_thread(aof_redis.kill)
                ledger.injected()

                # While the store is down: a clear, retryable refusal, not a hang and not INTERNAL.
                with pytest.raises(sdk.TurnFailed) as failed:
                    await conv.ask("Are you there?", timeout=CLEAR_STATUS_WITHIN_S)
                assert failed.value.code == grpc.StatusCode.UNAVAILABLE, failed.value
                assert failed.value.retry_after_ms > 0, "the refusal carries no retry hint"
                for call in (lambda: client.get_session(conv.session_id), lambda: client.create_session(CONFIG)):
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await call()
                    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
                    assert retry_after_ms(refused.value.trailing_metadata()) > 0, refused.value
                await assert_all_serving(orchestrator, *fault_stack.services.values())

                await asyncio.to_thread(aof_redis.start)
                after = await conv.ask("Which number?", timeout=60)
                assert after.outcome == "completed"
                stored = await ledger.check(client, conv.session_id, [before.turn_id, after.turn_id])
                assert stored[0] == before.turn_id and stored[-1] == after.turn_id
    finally:
        await asyncio.to_thread(orchestrator.stop, 10)
