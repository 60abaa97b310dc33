"""A model service that hangs (SIGSTOP: sockets open, nothing answers) fails the turn within the call
deadline, and a full admission queue refuses a turn at once: each with a clear status, the session left as
it was, and the next turn working once the service continues or the queue drains."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import sdk
from tests.faults.processes import assert_all_serving, stopped
from tests.faults.test_model_service_crash import MID_TURN, first_of

CONFIG = sdk.SessionConfig(seed=13, max_reply_tokens=6)
LONG_REPLY_TOKENS = 2000
# Deadlines shortened for the test (services/orchestrator/config.py); the bound on the client side is
# generous on top of them.
DEADLINES = {"VITA_ORCH_FIRST_RESPONSE_TIMEOUT_S": "5", "VITA_ORCH_STREAM_IDLE_TIMEOUT_S": "2"}
CLEAR_STATUS_WITHIN_S = 30.0


@pytest.fixture
async def short_deadline_orchestrator(fault_stack):
    orchestrator = await asyncio.to_thread(fault_stack.spawn_orchestrator, DEADLINES)
    try:
        yield orchestrator
    finally:
        await asyncio.to_thread(orchestrator.stop, 10)


@pytest.mark.parametrize("name", sorted(MID_TURN))
async def test_a_stopped_model_service_fails_the_turn_within_its_deadline(
        fault_stack, short_deadline_orchestrator, ledger, name):
    hung = fault_stack.services[name]
    async with sdk.AsyncClient(short_deadline_orchestrator.address) as client:
        async with await client.start(CONFIG, reconnect=None) as conv:
            before = await conv.ask("Warm up.", timeout=60)
            turn = await conv.send_text("Tell me a very long story.", max_reply_tokens=LONG_REPLY_TOKENS)
            await asyncio.wait_for(first_of(turn, MID_TURN[name]), 60)
            async with stopped(hung):
                ledger.injected()
                with pytest.raises(sdk.TurnFailed) as failed:
                    await turn.result(timeout=CLEAR_STATUS_WITHIN_S)
                assert failed.value.code == grpc.StatusCode.DEADLINE_EXCEEDED, failed.value
                assert name in failed.value.message  # names the stage that hung
                others = [p for p in fault_stack.services.values() if p is not hung]
                await assert_all_serving(short_deadline_orchestrator, *others)
                stored = await ledger.check(client, conv.session_id, [before.turn_id])
                assert stored[0] == before.turn_id
            # Continued: the service catches up (it drops the cancelled call) and serves the next turn.
            after = await conv.ask("Are you back?", timeout=60)
            assert after.outcome == "completed" and after.text
            await assert_all_serving(hung)
            stored = await ledger.check(client, conv.session_id, [before.turn_id, after.turn_id])
            assert stored[0] == before.turn_id and stored[-1] == after.turn_id


@pytest.fixture
async def one_turn_orchestrator(fault_stack):
    orchestrator = await asyncio.to_thread(fault_stack.spawn_orchestrator, {"VITA_ORCH_MAX_TURNS_IN_FLIGHT": "1"})
    try:
        yield orchestrator
    finally:
        await asyncio.to_thread(orchestrator.stop, 10)


async def test_a_full_admission_queue_refuses_with_resource_exhausted(one_turn_orchestrator, ledger):
    async with sdk.AsyncClient(one_turn_orchestrator.address) as client:
        async with await client.start(CONFIG, reconnect=None) as busy, \
                await client.start(CONFIG, reconnect=None) as refused:
            running = await busy.send_text("Tell me a very long story.", max_reply_tokens=LONG_REPLY_TOKENS)
            await asyncio.wait_for(first_of(running, sdk.TextDelta), 60)
            ledger.injected()
            with pytest.raises(sdk.TurnFailed) as full:
                await refused.ask("Me too?", timeout=CLEAR_STATUS_WITHIN_S)
            assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED, full.value
            assert "retry" in full.value.message.lower()  # the client is told what to do
            assert full.value.retry_after_ms > 0  # and a program is told when, in a field
            await running.cancel()
            await running.result(timeout=CLEAR_STATUS_WITHIN_S)
            await assert_all_serving(one_turn_orchestrator)
            # The queue drained: the refused session takes its turn now, and kept nothing of the refusal.
            after = await refused.ask("Me now?", timeout=60)
            assert after.outcome == "completed"
            stored = await ledger.check(client, refused.session_id, [after.turn_id])
            assert stored == [after.turn_id]
