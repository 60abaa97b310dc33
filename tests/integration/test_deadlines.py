"""A model service that hangs (SIGSTOP) fails the turn within the deadline, with a status and a message
that name the stage; the session is left intact and the next turn works once it runs again. With a second
replica, a call that got nothing from the hung one is retried there and the turn completes."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from tests.client import Client
from vita.assistant.v1 import assistant_pb2

DEADLINE_EXCEEDED, UNAVAILABLE = 4, 14
SHORT_DEADLINES = {
    "VITA_ORCH_CONNECT_TIMEOUT_S": "3",
    "VITA_ORCH_FIRST_RESPONSE_TIMEOUT_S": "3",
    "VITA_ORCH_STREAM_IDLE_TIMEOUT_S": "3",
}


async def spawn(stack, name: str):
    process = stack.spawn(name, stack._env())
    await asyncio.to_thread(process.wait_ready, stack.config.start_timeout_s)
    return process


async def test_a_hung_speech_service_fails_the_turn_and_keeps_the_session(stack):
    speech = await spawn(stack, "speech")
    orchestrator = None
    try:
        orchestrator = await asyncio.to_thread(
            stack.spawn_orchestrator, {"VITA_ORCH_SPEECH_ADDRESS": speech.address, **SHORT_DEADLINES}
        )
        async with Client(orchestrator.address) as client:
            session_id = await client.create_session(seed=3, max_reply_tokens=12)
            async with client.converse(session_id) as conv:
                first = await conv.turn("Hello, how are you?")
                assert first.completed.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED

                os.kill(speech.process.pid, signal.SIGSTOP)
                started = time.monotonic()
                hung = await conv.turn("Tell me about the sea.", timeout=60)
                waited = time.monotonic() - started
                assert len(hung.errors) == 1, [e.message for e in hung.errors]
                error = hung.errors[0]
                assert error.code in (DEADLINE_EXCEEDED, UNAVAILABLE) and "speech service" in error.message
                assert waited < 30  # deadlines of 3 s, with room for a busy machine

                session = await client.get_session(session_id)
                assert session.running_turn_id == ""
                assert [t.user_text for t in session.history][0] == "Hello, how are you?"
                assert session.history[0].outcome == assistant_pb2.TURN_OUTCOME_COMPLETED

                os.kill(speech.process.pid, signal.SIGCONT)
                after = await conv.turn("And now?", timeout=60)
                assert not after.errors, [e.message for e in after.errors]
                assert after.completed.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED and after.pcm
            assert speech.process.poll() is None
    finally:
        os.kill(speech.process.pid, signal.SIGCONT)
        if orchestrator is not None:
            await asyncio.to_thread(orchestrator.stop, 10)
        await asyncio.to_thread(speech.stop, 10)


async def test_a_call_the_hung_replica_never_answered_is_retried_on_the_other(stack):
    hung = await spawn(stack, "speech")
    healthy = stack.services["speech"]
    orchestrator = None
    try:
        orchestrator = await asyncio.to_thread(
            stack.spawn_orchestrator,
            {"VITA_ORCH_SPEECH_ADDRESS": f"{hung.address},{healthy.address}", **SHORT_DEADLINES},
        )
        os.kill(hung.process.pid, signal.SIGSTOP)
        async with Client(orchestrator.address) as client:
            session_id = await client.create_session(seed=4, max_reply_tokens=6)
            async with client.converse(session_id) as conv:
                # Streams alternate between the replicas: at least one of these starts on the hung one.
                for index in range(3):
                    turn = await conv.turn(f"Say something, number {index}.", timeout=60)
                    assert not turn.errors, [e.message for e in turn.errors]
                    assert turn.completed.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED and turn.pcm
    finally:
        os.kill(hung.process.pid, signal.SIGCONT)
        if orchestrator is not None:
            await asyncio.to_thread(orchestrator.stop, 10)
        await asyncio.to_thread(hung.stop, 10)
