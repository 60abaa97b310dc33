"""After a transport drop the SDK opens a new stream on the same session by itself and says what happened
to the turn that was running. Real stack: an orchestrator killed and restarted on its port, and a
network cut while the orchestrator lives on."""

from __future__ import annotations

import asyncio
import signal

import pytest

import sdk
from tests.sdk.waits import next_of, wait_idle
from tests.sdk.proxy import CuttableProxy

# Quick retries: the tests wait for a restart, not for a production backoff.
FAST = sdk.ReconnectPolicy(initial_delay_s=0.1, max_delay_s=0.5, give_up_after_s=90.0)
QUIET = sdk.SessionConfig(max_reply_tokens=8, speech_output=False)


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


async def kill(orchestrator) -> None:
    orchestrator.process.send_signal(signal.SIGKILL)  # a crash, not a drain
    await asyncio.to_thread(orchestrator.process.wait)




async def test_resumes_the_session_after_the_orchestrator_restarts_between_turns(stack):
    orchestrator = await asyncio.to_thread(stack.spawn_orchestrator)
    try:
        async with sdk.AsyncClient(orchestrator.address) as client:
            async with await client.start(QUIET, reconnect=FAST) as conv:
                first = await conv.ask("Remember the number seven.")
                await kill(orchestrator)
                orchestrator = await asyncio.to_thread(stack.spawn_orchestrator, None, port_of(orchestrator.address))
                reconnected = await next_of(conv, sdk.Reconnected)
                assert reconnected.attempts >= 1 and conv.connected
                assert [t.turn_id for t in reconnected.session.history] == [first.turn_id]
                again = await conv.ask("Which number?")
            assert again.outcome == "completed"
            history = (await client.get_session(conv.session_id)).history
            assert [t.user_text for t in history] == ["Remember the number seven.", "Which number?"]
    finally:
        await asyncio.to_thread(orchestrator.stop, 10)


async def test_a_turn_cut_by_an_orchestrator_crash_is_reported_interrupted(stack):
    # A killed orchestrator cannot release the session's turn lock: a short lock lifetime lets it expire.
    env = {"VITA_ORCH_TURN_LOCK_TTL_S": "1.0"}
    orchestrator = await asyncio.to_thread(stack.spawn_orchestrator, env)
    try:
        async with sdk.AsyncClient(orchestrator.address) as client:
            async with await client.start(sdk.SessionConfig(seed=3, max_reply_tokens=400), reconnect=FAST) as conv:
                turn = await conv.send_text("Tell me a long story.")
                async for event in turn.events():
                    if isinstance(event, sdk.AudioChunk):
                        break
                await kill(orchestrator)
                with pytest.raises(sdk.TurnInterruptedError) as interrupted:
                    await turn.result(timeout=30)
                partial = interrupted.value.partial
                assert partial.text and partial.pcm and partial.completed is None
                assert partial.interrupted.received_text == partial.text
                assert "UNAVAILABLE" in interrupted.value.reason

                orchestrator = await asyncio.to_thread(stack.spawn_orchestrator, env, port_of(orchestrator.address))
                await next_of(conv, sdk.Reconnected)
                await wait_idle(client, conv.session_id)
                assert (await conv.ask("Are you back?", max_reply_tokens=8)).outcome == "completed"
    finally:
        await asyncio.to_thread(orchestrator.stop, 10)


async def test_a_network_cut_interrupts_the_turn_and_the_server_keeps_its_delivered_part(stack):
    host, port = stack.address.rsplit(":", 1)
    proxy = await CuttableProxy(host, int(port)).start()
    try:
        async with sdk.AsyncClient(proxy.address) as client:
            async with await client.start(sdk.SessionConfig(seed=4, max_reply_tokens=400), reconnect=FAST) as conv:
                turn = await conv.send_text("Talk for a long time")
                async for event in turn.events():
                    if isinstance(event, sdk.AudioChunk):
                        break
                proxy.cut()
                with pytest.raises(sdk.TurnInterruptedError) as interrupted:
                    await turn.result(timeout=30)
                received = interrupted.value.partial.text
                reconnected = await next_of(conv, sdk.Reconnected, timeout=30)
                assert reconnected.downtime_s < 30
                # The orchestrator lived on: it saw the client leave, cancelled the turn and stored it.
                await wait_idle(client, conv.session_id)
                stored = (await client.get_session(conv.session_id)).history[-1]
                assert stored.turn_id == turn.turn_id and stored.outcome == "cancelled"
                # The server kept no more than it sent, and the client read a part of that.
                assert stored.reply_text.startswith(received) or received.startswith(stored.reply_text)
                assert (await conv.ask("Still there?", max_reply_tokens=8)).outcome == "completed"
    finally:
        await proxy.stop()


async def test_without_a_reconnect_policy_a_drop_ends_the_conversation(stack):
    orchestrator = await asyncio.to_thread(stack.spawn_orchestrator)
    try:
        async with sdk.AsyncClient(orchestrator.address) as client:
            async with await client.start(QUIET, reconnect=None) as conv:
                await kill(orchestrator)
                ended = await next_of(conv, sdk.StreamEnded, timeout=30)
                assert ended.code is not None and not conv.connected
                with pytest.raises(sdk.ConversationClosed):
                    await conv.ask("Hello?")
    finally:
        await asyncio.to_thread(orchestrator.stop, 10)
