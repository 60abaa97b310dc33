"""Playback positions: the simulated player's clock, what the SDK sends (against a scripted in-process
server that records the client's events), and that the real orchestrator accepts the reports."""

from __future__ import annotations

import asyncio
import time

import pytest

import sdk
from sdk.playback import SimulatedPlayback
from tests.sdk.scripted_server import CHUNK_MS, CHUNKS, ScriptedServer


def test_simulated_playback_plays_in_real_time_and_stalls_when_it_runs_out():
    player = SimulatedPlayback()
    player.on_audio("t", 300.0, now=10.0)
    assert player.position("t", now=10.1) == 100
    assert player.position("t", now=10.5) == 300  # ran out: stalls at what arrived
    player.on_audio("t", 300.0, now=11.0)
    assert player.position("t", now=11.2) == 500
    assert player.due(now=11.2) == [("t", 500)] and player.due(now=11.2) == []
    player.on_turn_end("t")
    assert player.due(now=12.0) == [("t", 600)]
    assert player.position("t", now=12.0) is None  # all played: forgotten after its last report
    player.on_audio("u", 1000.0, now=20.0)
    assert player.stop("u", now=20.25) == 250 and player.position("u", now=21.0) is None


async def test_the_simulated_player_reports_its_position_while_it_plays():
    async with ScriptedServer() as server, sdk.AsyncClient(server.address) as client:
        async with client.conversation("s1", simulate_playback=True) as conv:
            turn = await conv.send_text("Hi")
            started = time.perf_counter()
            async for event in turn.events():
                if isinstance(event, sdk.AudioChunk):
                    break
            await asyncio.sleep(1.4)
            positions = [p for p in server.assistant.positions() if p[1] == turn.turn_id]
    played = [ms for _, _, ms in positions]
    # About five reports a second, rising with the clock, up to the second of audio received.
    assert 4 <= len(played) <= 9 and played == sorted(played) and played[-1] == CHUNKS * CHUNK_MS
    for at, _, ms in positions:
        assert ms <= (at - started) * 1000 + 1


async def test_a_cancel_reports_the_position_first_and_then_stops_reporting():
    async with ScriptedServer() as server, sdk.AsyncClient(server.address) as client:
        async with client.conversation("s1", simulate_playback=True) as conv:
            turn = await conv.send_text("long")
            async for event in turn.events():
                if isinstance(event, sdk.AudioChunk):
                    break
            await asyncio.sleep(0.3)
            await turn.cancel()
            await conv.report_playback(turn.turn_id, 123)  # a client's own report goes through as is
            await asyncio.sleep(0.5)
        received = server.assistant.received
    kinds = [e.WhichOneof("event") for _, e in received]
    last_position = max(i for i, kind in enumerate(kinds) if kind == "playback" and i < kinds.index("cancel"))
    stopped_at = received[last_position][1].playback.played_ms
    assert 250 <= stopped_at < CHUNKS * CHUNK_MS  # the player had played ~0.3 s when the user cancelled
    after = [e.playback.played_ms for _, e in received[kinds.index("cancel"):] if e.WhichOneof("event") == "playback"]
    assert after == [123]  # the clock stopped for that turn


async def test_the_orchestrator_keeps_the_reply_up_to_the_reported_position(stack):
    async with sdk.AsyncClient(stack.address) as client:
        async with await client.start(sdk.SessionConfig(seed=9, max_reply_tokens=400)) as conv:
            turn = await conv.send_text("Talk for a long time")
            async for event in turn.events():
                if isinstance(event, sdk.AudioChunk):
                    break
            # A client whose player has not started yet: nothing of the reply was heard.
            assert await conv.report_playback(turn.turn_id, 0)
            await turn.cancel()
            result = await turn.result(timeout=60)
            stored = (await client.get_session(conv.session_id)).history[-1]
    assert result.text and result.outcome == "cancelled"
    assert result.completed.reply_text == stored.reply_text == ""


async def test_the_simulated_player_reports_reach_the_orchestrator(stack):
    async with sdk.AsyncClient(stack.address) as client:
        config = sdk.SessionConfig(seed=9, max_reply_tokens=400)
        async with await client.start(config, simulate_playback=True) as conv:
            turn = await conv.send_text("Talk for a long time")
            async for event in turn.events():
                if isinstance(event, sdk.AudioChunk):
                    break
            await asyncio.sleep(0.5)
            await turn.cancel()
            result = await turn.result(timeout=60)
            with pytest.raises(TimeoutError):
                await conv.next_event(timeout=0.5)  # no report was refused
    # What the simulated player played (~0.5 s) is less than what arrived: history keeps that part.
    assert result.text.startswith(result.completed.reply_text)
    assert len(result.completed.reply_text) < len(result.text)
