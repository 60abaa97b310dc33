"""Playback positions: the simulated player's clock, what the SDK sends (against a scripted in-process
server that records the client's events), and that the real orchestrator accepts the reports."""

from __future__ import annotations

import asyncio
import time

import grpc

import sdk
from sdk.playback import SimulatedPlayback
from vita.assistant.v1 import assistant_pb2 as pb
from vita.assistant.v1 import assistant_pb2_grpc

RATE_HZ = 24000
CHUNK_MS = 100
CHUNKS = 10  # one second of reply audio, sent at once


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


class ScriptedAssistant(assistant_pb2_grpc.AssistantServicer):
    """A Converse that answers every turn with one second of silence, sent at once, and completes it
    unless the client cancels first; it records the client's events with their arrival times."""

    def __init__(self):
        self.received: list[tuple[float, pb.ClientEvent]] = []

    async def Converse(self, request_iterator, context):
        start = await anext(request_iterator)
        yield pb.ServerEvent(session_id=start.start.session_id, ready=pb.Ready(weights="scripted"))
        outbound: asyncio.Queue = asyncio.Queue()
        reader = asyncio.create_task(self._read(request_iterator, outbound))
        try:
            while (event := await outbound.get()) is not None:
                yield event
        finally:
            reader.cancel()

    async def _read(self, request_iterator, outbound: asyncio.Queue) -> None:
        async for event in request_iterator:
            self.received.append((time.perf_counter(), event))
            kind = event.WhichOneof("event")
            if kind == "turn":
                turn_id = event.turn.turn_id
                outbound.put_nowait(pb.ServerEvent(turn_id=turn_id, turn_started=pb.TurnStarted(input="text")))
                outbound.put_nowait(pb.ServerEvent(turn_id=turn_id, text_delta=pb.TextDelta(text="hm")))
                for index in range(CHUNKS):
                    pcm = b"\x00\x00" * (RATE_HZ * CHUNK_MS // 1000)
                    outbound.put_nowait(pb.ServerEvent(turn_id=turn_id, audio=pb.AudioOut(pcm=pcm, sample_rate_hz=RATE_HZ)))
            elif kind == "cancel":
                turn_id = event.cancel.turn_id
                flush = pb.ServerEvent(turn_id=turn_id)
                flush.playback_flush.SetInParent()
                outbound.put_nowait(flush)
                done = pb.ServerEvent(turn_id=turn_id)
                done.turn_completed.reply_text = "hm"
                outbound.put_nowait(done)

    def positions(self) -> list[tuple[float, str, int]]:
        return [(at, e.playback.turn_id, e.playback.played_ms) for at, e in self.received if e.WhichOneof("event") == "playback"]


async def _scripted_server():
    servicer = ScriptedAssistant()
    server = grpc.aio.server()
    assistant_pb2_grpc.add_AssistantServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, servicer, f"127.0.0.1:{port}"


async def test_the_simulated_player_reports_its_position_while_it_plays():
    server, servicer, address = await _scripted_server()
    try:
        async with sdk.AsyncClient(address) as client:
            async with client.conversation("s1", simulate_playback=True) as conv:
                turn = await conv.send_text("Hi")
                started = time.perf_counter()
                async for event in turn.events():
                    if isinstance(event, sdk.AudioChunk):
                        break
                await asyncio.sleep(1.4)
                positions = [p for p in servicer.positions() if p[1] == turn.turn_id]
    finally:
        await server.stop(None)
    played = [ms for _, _, ms in positions]
    # About five reports a second, rising with the clock, up to the second of audio received.
    assert 4 <= len(played) <= 9 and played == sorted(played) and played[-1] == CHUNKS * CHUNK_MS
    for at, _, ms in positions:
        assert ms <= (at - started) * 1000 + 1


async def test_a_cancel_reports_the_position_first_and_then_stops_reporting():
    server, servicer, address = await _scripted_server()
    try:
        async with sdk.AsyncClient(address) as client:
            async with client.conversation("s1", simulate_playback=True) as conv:
                turn = await conv.send_text("Hi")
                async for event in turn.events():
                    if isinstance(event, sdk.AudioChunk):
                        break
                await asyncio.sleep(0.3)
                await turn.cancel()
                await conv.report_playback(turn.turn_id, 123)  # a client's own report goes through as is
                await asyncio.sleep(0.5)
    finally:
        await server.stop(None)
    kinds = [e.WhichOneof("event") for _, e in servicer.received]
    last_position = max(i for i, kind in enumerate(kinds) if kind == "playback" and i < kinds.index("cancel"))
    stopped_at = servicer.received[last_position][1].playback.played_ms
    assert 250 <= stopped_at < CHUNKS * CHUNK_MS  # the player had played ~0.3 s when the user cancelled
    after = [e.playback.played_ms for _, e in servicer.received[kinds.index("cancel"):] if e.WhichOneof("event") == "playback"]
    assert after == [123]  # the clock stopped for that turn
