"""Drives the public Assistant API: one session and one open Converse stream per simulated user, turns
sent back to back, every server event time-stamped on arrival (a reader task per stream)."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc

from apps.bench.driver import run_phases
from apps.bench.stats import FirstSegmentWatch, TurnSample
from apps.bench.workload import (
    AUDIO_CHUNK_MS,
    IMAGE,
    INPUT_SAMPLE_RATE_HZ,
    SPOKEN,
    BenchTurn,
    SessionScript,
    Workload,
)
from shared.grpc_server import channel_options
from vita.assistant.v1 import assistant_pb2 as pb
from vita.assistant.v1 import assistant_pb2_grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CODE_NAMES = {3: "INVALID_ARGUMENT", 5: "NOT_FOUND", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
              10: "ABORTED", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE"}
# An input kind this deployment does not serve yet is refused with one of these: the turn is counted
# as unsupported (not failed) and the session skips later turns of that kind.
UNSUPPORTED_CODES = (9, 12)
_EOF = object()


class ApiSession:
    """One simulated user of the public API."""

    def __init__(self, stub: assistant_pb2_grpc.AssistantStub, metadata, workload: Workload, script: SessionScript,
                 turn_timeout_s: float):
        self._stub = stub
        self._metadata = metadata
        self._workload = workload
        self._script = script
        self._timeout = turn_timeout_s
        self._session_id = ""
        self._call = None
        self._reader: asyncio.Task | None = None
        self._events: asyncio.Queue = asyncio.Queue()
        self._unsupported: set[str] = set()

    # The seed of spoken turns (AudioCommit carries none, so they use the session's).
    @property
    def session_seed(self) -> int:
        return self._workload.turn_seed(self._script.index, -1)

    async def open(self) -> None:
        config = pb.SessionConfig(
            max_reply_tokens=self._workload.reply_tokens,
            seed=self.session_seed,
            speech_output=self._workload.speech_output,
            vad=pb.VoiceActivityConfig(enabled=self._workload.speech_end == "vad"),
        )
        if self._workload.history_turns is not None:
            config.max_history_turns = self._workload.history_turns
        created = await self._stub.CreateSession(pb.CreateSessionRequest(config=config), metadata=self._metadata)
        self._session_id = created.session.session_id
        await self._open_stream()

    async def _open_stream(self) -> None:
        self._call = self._stub.Converse(metadata=self._metadata)
        start = pb.ConverseStart(session_id=self._session_id)
        if self._workload.has_spoken:
            start.input_sample_rate_hz = INPUT_SAMPLE_RATE_HZ
            start.input_encoding = pb.AUDIO_ENCODING_PCM16
        await self._call.write(pb.ClientEvent(start=start))
        ready = await self._call.read()
        if ready is grpc.aio.EOF or ready.WhichOneof("event") != "ready":
            raise RuntimeError(f"session {self._session_id}: the stream did not start")
        self._events = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                event = await self._call.read()
                arrived = time.perf_counter()
                if event is grpc.aio.EOF:
                    break
                self._events.put_nowait((arrived, event))
        except grpc.aio.AioRpcError as error:
            self._events.put_nowait((time.perf_counter(), error))
        finally:
            self._events.put_nowait((time.perf_counter(), _EOF))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._call is not None:
            self._call.cancel()

    async def turn(self, index: int, turn: BenchTurn, warmup: bool) -> TurnSample:
        sample = TurnSample(self._script.index, index, turn.kind, warmup)
        if turn.kind in self._unsupported:
            sample.unsupported = True
            return sample
        if self._reader is None or self._reader.done():
            await self.close()
            await self._open_stream()
        turn_id = f"bench-{self._script.index}-{index}-{uuid.uuid4().hex[:8]}"
        done = asyncio.Event()
        sender: asyncio.Task | None = None
        if turn.kind == SPOKEN:
            sender = asyncio.create_task(self._stream_audio(turn, turn_id, sample, done))
            sender.add_done_callback(self._on_sender_done)
            expected = turn_id if self._workload.speech_end == "commit" else None
        else:
            message = pb.UserTurn(turn_id=turn_id, text=turn.text, seed=self._workload.turn_seed(self._script.index, index),
                                  max_reply_tokens=self._workload.reply_tokens)
            if turn.kind == IMAGE:
                message.media.append(pb.MediaInput(image=turn.image, max_tiles=turn.max_tiles))
            sample.input_end = time.perf_counter()
            await self._call.write(pb.ClientEvent(turn=message))
            expected = turn_id
        try:
            await asyncio.wait_for(self._collect(sample, expected, spoken=sender is not None), self._timeout)
        except asyncio.TimeoutError:
            sample.error = f"DEADLINE_EXCEEDED: no turn_completed within {self._timeout:.0f} s"
            await self.close()  # the stream is in an unknown state: the next turn opens a new one
        finally:
            done.set()
            if sender is not None:
                # Not cancelled: a write cancelled half-way can break the whole stream. It stops by
                # itself after the chunk in flight.
                await asyncio.gather(sender, return_exceptions=True)
        if sample.unsupported:
            self._unsupported.add(turn.kind)
        return sample

    def _on_sender_done(self, task: asyncio.Task) -> None:
        """A failed audio write ends the turn (its collector would otherwise wait for the timeout)."""
        if not task.cancelled() and task.exception() is not None:
            self._events.put_nowait((time.perf_counter(), task.exception()))

    async def _stream_audio(self, turn: BenchTurn, turn_id: str, sample: TurnSample, done: asyncio.Event) -> None:
        """Real-time pace: chunk i leaves when its last sample has been "recorded" (t0 + (i+1)·40 ms)."""
        chunk_samples = INPUT_SAMPLE_RATE_HZ * AUDIO_CHUNK_MS // 1000
        chunk_s = chunk_samples / INPUT_SAMPLE_RATE_HZ
        silence = b"\x00\x00" * chunk_samples
        t0 = time.perf_counter()
        sample.speech_end = t0 + turn.speech_end_s
        if self._workload.speech_end == "vad":
            sample.input_end = sample.speech_end  # the server's VAD has to find it
        offset, chunk = 0, 0
        # Under VAD a client keeps streaming its microphone (silence here) until the reply is over.
        vad = self._workload.speech_end == "vad"
        while not done.is_set() and (offset < len(turn.pcm16) or vad):
            chunk += 1
            delay = t0 + chunk * chunk_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            data = turn.pcm16[offset: offset + 2 * chunk_samples] if offset < len(turn.pcm16) else silence
            offset += len(data)
            await self._call.write(pb.ClientEvent(audio=pb.AudioAppend(data=data)))
        if not vad and not done.is_set():
            sample.input_end = time.perf_counter()
            await self._call.write(pb.ClientEvent(audio_commit=pb.AudioCommit(turn_id=turn_id)))

    async def _collect(self, sample: TurnSample, expected: str | None, *, spoken: bool) -> None:
        watch = FirstSegmentWatch()
        while True:
            arrived, event = await self._events.get()
            if event is _EOF or isinstance(event, Exception):
                detail = event.code().name if isinstance(event, grpc.aio.AioRpcError) else repr(event)
                sample.error = f"STREAM_ENDED: {detail}"
                return
            kind = event.WhichOneof("event")
            if expected is not None and event.turn_id and event.turn_id != expected:
                continue  # late events of an earlier turn
            if kind == "error":
                if not event.turn_id and not spoken:
                    continue  # stream-level refusals left over from an earlier spoken turn
                if event.error.code in UNSUPPORTED_CODES and sample.kind in (SPOKEN, IMAGE) and sample.first_text is None:
                    sample.unsupported = True
                else:
                    sample.error = f"{CODE_NAMES.get(event.error.code, event.error.code)}: {event.error.message}"
                return
            if kind == "turn_started" and expected is None:
                expected = event.turn_id
            elif kind == "text_delta":
                sample.on_text(event.text_delta.text, arrived, watch)
            elif kind == "audio":
                sample.first_audio = sample.first_audio or arrived
                sample.sample_rate_hz = event.audio.sample_rate_hz
                sample.audio_chunks.append((arrived, len(event.audio.pcm) // 2))
            elif kind == "turn_completed":
                completed = event.turn_completed
                sample.finished = arrived
                sample.outcome = pb.TurnOutcome.Name(completed.outcome).removeprefix("TURN_OUTCOME_").lower()
                sample.reply_tokens = completed.reply_tokens
                sample.prefilled_tokens = completed.prefilled_prompt_tokens
                sample.cached_tokens = completed.cached_prompt_tokens
                sample.server_ttft_ms = completed.timings.ttft_ms or None
                sample.server_ttfa_ms = completed.timings.ttfa_ms or None
                for stage in completed.timings.stages:
                    sample.add_stage(stage.stage, stage.queue_ms, stage.compute_ms)
                return


async def run_distributed(address: str, workload: Workload, *, api_key: str | None = None,
                          turn_timeout_s: float = 600.0) -> tuple[list[TurnSample], float]:
    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    # One channel per session, like independent clients (one HTTP/2 connection each).
    channels = [grpc.aio.insecure_channel(address, options=channel_options(MAX_MESSAGE_BYTES)) for _ in workload.sessions]
    try:
        drivers = [
            ApiSession(assistant_pb2_grpc.AssistantStub(channel), metadata, workload, script, turn_timeout_s)
            for channel, script in zip(channels, workload.sessions)
        ]
        return await run_phases(workload, drivers)
    finally:
        for channel in channels:
            await channel.close()
