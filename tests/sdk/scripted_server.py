"""An in-process Assistant server with a fixed script, for what the SDK does on its own (playback
reports, which turn a handle follows): it records the client's events with their arrival times.

Script: a typed turn starts at once, sends a text delta and one second of silent speech, and completes
unless its text is "long" (then it runs until cancelled). Audio b"end-of-utterance" makes the server
start a spoken turn by itself 50 ms later (as server VAD would), b"bad" is refused with a stream-level
INVALID_ARGUMENT, and a commit makes a spoken turn unless VAD already made one since the last commit.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from vita.assistant.v1 import assistant_pb2 as pb
from vita.assistant.v1 import assistant_pb2_grpc

RATE_HZ = 24000
CHUNK_MS = 100
CHUNKS = 10  # one second of reply audio, sent at once
VAD_DELAY_S = 0.05
INVALID_ARGUMENT = 3


class ScriptedAssistant(assistant_pb2_grpc.AssistantServicer):
    def __init__(self):
        self.received: list[tuple[float, pb.ClientEvent]] = []
        self._vad_turns = 0

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
        vad_since_commit = False
        async for event in request_iterator:
            self.received.append((time.perf_counter(), event))
            kind = event.WhichOneof("event")
            if kind == "turn":
                self._reply(outbound, event.turn.turn_id, "text", complete=event.turn.text != "long")
            elif kind == "audio" and event.audio.data == b"end-of-utterance":
                self._vad_turns += 1
                vad_since_commit = True
                await asyncio.sleep(VAD_DELAY_S)
                self._reply(outbound, f"vad-{self._vad_turns}", "audio", complete=True)
            elif kind == "audio" and event.audio.data == b"bad":
                outbound.put_nowait(pb.ServerEvent(error=pb.Error(code=INVALID_ARGUMENT, message="bad audio")))
            elif kind == "audio_commit":
                if not vad_since_commit:
                    self._reply(outbound, event.audio_commit.turn_id, "audio", complete=True)
                vad_since_commit = False
            elif kind == "cancel":
                flush = pb.ServerEvent(turn_id=event.cancel.turn_id)
                flush.playback_flush.SetInParent()
                outbound.put_nowait(flush)
                outbound.put_nowait(pb.ServerEvent(turn_id=event.cancel.turn_id, turn_completed=pb.TurnCompleted(reply_text="hm")))

    @staticmethod
    def _reply(outbound: asyncio.Queue, turn_id: str, input_kind: str, complete: bool) -> None:
        outbound.put_nowait(pb.ServerEvent(turn_id=turn_id, turn_started=pb.TurnStarted(input=input_kind)))
        outbound.put_nowait(pb.ServerEvent(turn_id=turn_id, text_delta=pb.TextDelta(text="hm")))
        for _ in range(CHUNKS):
            pcm = b"\x00\x00" * (RATE_HZ * CHUNK_MS // 1000)
            outbound.put_nowait(pb.ServerEvent(turn_id=turn_id, audio=pb.AudioOut(pcm=pcm, sample_rate_hz=RATE_HZ)))
        if complete:
            outbound.put_nowait(pb.ServerEvent(turn_id=turn_id, turn_completed=pb.TurnCompleted(reply_text="hm")))

    def positions(self) -> list[tuple[float, str, int]]:
        return [(at, e.playback.turn_id, e.playback.played_ms) for at, e in self.received
                if e.WhichOneof("event") == "playback"]


class ScriptedServer:
    """`async with ScriptedServer() as server:` → server.address, server.assistant."""

    async def __aenter__(self) -> "ScriptedServer":
        self.assistant = ScriptedAssistant()
        self._server = grpc.aio.server()
        assistant_pb2_grpc.add_AssistantServicer_to_server(self.assistant, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.address = f"127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc) -> None:
        await self._server.stop(None)
