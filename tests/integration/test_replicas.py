"""Replicas for real. Two speech processes behind one orchestrator (a comma-separated target,
client-side round_robin): turns spread over both, and when one dies the following turns still succeed."""

from __future__ import annotations

import asyncio

from tests.client import Client, scrape
from vita.assistant.v1 import assistant_pb2

TURNS_PER_PHASE = 4


def streams_served(metrics_port: int) -> float:
    """Synthesis streams a speech replica has finished, whatever their outcome."""
    return sum(value for (name, _), value in scrape(metrics_port).items() if name == "vita_speech_streams_total")


async def run_turns(address: str, count: int) -> None:
    async with Client(address) as client:
        session_id = await client.create_session(seed=5, max_reply_tokens=6)
        async with client.converse(session_id) as conv:
            for index in range(count):
                turn = await conv.turn(f"Say something, number {index}.")
                assert not turn.errors, [e.message for e in turn.errors]
                assert turn.completed.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED and turn.of("audio")


async def test_two_speech_replicas_share_turns_and_survive_one_dying(stack):
    first = stack.services["speech"]
    second = stack.spawn("speech", stack._env())
    orchestrator = None
    try:
        await asyncio.to_thread(second.wait_ready, stack.config.start_timeout_s)
        orchestrator = await asyncio.to_thread(
            stack.spawn_orchestrator, {"VITA_ORCH_SPEECH_ADDRESS": f"{first.address},{second.address}"}
        )
        replicas = (first, second)
        before = [streams_served(r.metrics_port) for r in replicas]
        await run_turns(orchestrator.address, TURNS_PER_PHASE)
        # A speech stream is counted when it closes, just after turn_completed.
        for _ in range(50):
            served = [streams_served(r.metrics_port) - b for r, b in zip(replicas, before)]
            if sum(served) >= TURNS_PER_PHASE:
                break
            await asyncio.sleep(0.1)
        assert sum(served) == TURNS_PER_PHASE
        assert all(count >= 1 for count in served), f"round_robin should use both replicas, got {served}"

        # One replica dies without a goodbye (SIGKILL: no drain, no GOAWAY from it).
        second.process.kill()
        await asyncio.to_thread(second.process.wait)
        survivor_before = streams_served(first.metrics_port)
        await run_turns(orchestrator.address, TURNS_PER_PHASE)
        for _ in range(50):
            if streams_served(first.metrics_port) - survivor_before >= TURNS_PER_PHASE:
                break
            await asyncio.sleep(0.1)
        assert streams_served(first.metrics_port) - survivor_before == TURNS_PER_PHASE
    finally:
        if orchestrator is not None:
            await asyncio.to_thread(orchestrator.stop, 10)
        await asyncio.to_thread(second.stop, 10)
