"""The speech service over gRPC: one synthesis stream per reply, moved to another replica (its segments
replayed) when it fails before its first event."""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Callable

import grpc

from services.orchestrator.backends import (
    BackendError,
    CallIds,
    SpeechAudio,
    SpeechDone,
    SpeechEvent,
    SpeechSegmentDone,
)
from services.orchestrator.deadlines import CallDeadlines, StreamWatch, deadline_error, within
from services.orchestrator.grpc_calls import (
    RETRYABLE,
    WRITE_AFTER_END,
    GrpcBackend,
    call_context,
    reason_name,
    rpc_errors,
    stage_times,
)
from services.orchestrator.replicas import Replica
from vita.speech.v1 import speech_pb2, speech_pb2_grpc

log = logging.getLogger(__name__)


class GrpcSpeechStream:
    """One synthesis stream. Until its first event it may move to another replica: the start and the
    segments pushed so far are replayed there. It owes audio while it holds unfinished segments, and its
    end once `end` was sent."""

    def __init__(self, speech: "GrpcSpeech", ids: CallIds, attempts: list[Replica]):
        self._speech = speech
        self._ids = ids
        self._attempts = attempts
        self._attempt = 0
        self._call = None
        self._segments: list[speech_pb2.SynthesizeRequest] = []
        self._unfinished: set[int] = set()
        self._ended = False
        self._answered = False
        self._cancelled = False
        self._switch = asyncio.Lock()
        self._held: Replica | None = None
        self._watch = StreamWatch("speech", speech.deadlines, first_what="produced no audio for a text segment",
                                  idle_what="stalled mid-reply: no audio")

    @property
    def _idle_s(self) -> float:
        return self._speech.deadlines.idle_s

    async def connect(self) -> None:
        """Opens the call on the current replica, or on the next one when that fails retryably."""
        while True:
            try:
                await self._open(self._attempts[self._attempt])
                return
            except BackendError as error:
                if not self._may_retry(error):
                    self._hold(None)
                    raise
                self._attempt += 1

    def _may_retry(self, error: BackendError) -> bool:
        return (not self._answered and not self._cancelled and error.code in RETRYABLE
                and self._attempt + 1 < len(self._attempts))

    def _hold(self, replica: Replica | None) -> None:
        """Counts this stream against the replica it runs on (the two-choices pick), and no longer the last."""
        if self._held is not None:
            self._held.in_flight -= 1
        self._held = replica
        if replica is not None:
            replica.hold()

    async def _open(self, replica: Replica) -> None:
        self._hold(replica)
        stub = await self._speech.connected(replica)
        call = stub.Synthesize()
        self._call = call
        start = speech_pb2.SynthesizeRequest(start=speech_pb2.SynthesisStart(ctx=call_context(self._ids)))
        for message in (start, *self._segments):
            await self._write(call, message)
        if self._ended:
            await self._write(call, None)

    async def _write(self, call, message: speech_pb2.SynthesizeRequest | None) -> None:
        """One write (None = done writing) that the service must take within the idle deadline. A call
        that has already ended is left to the read side, which has its status."""
        step = call.write(message) if message is not None else call.done_writing()
        try:
            with rpc_errors("speech"):
                await within(step, self._idle_s, deadline_error("speech", "did not take a text segment", self._idle_s))
        except WRITE_AFTER_END:
            pass

    async def _move_on(self, failed_call, error: BackendError) -> None:
        """The call failed: reopen on the next replica if nothing came out yet, else raise `error`."""
        async with self._switch:
            if failed_call is not self._call:
                return  # already moved on by the other side
            if not self._may_retry(error):
                raise error
            failed_call.cancel()
            log.warning("speech stream on %s failed before any audio (%s); retrying on %s",
                        self._attempts[self._attempt].target, error.code, self._attempts[self._attempt + 1].target)
            self._attempt += 1
            self._watch.restart()
            await self.connect()

    async def push(self, index: int, text: str) -> None:
        message = speech_pb2.SynthesizeRequest(segment=speech_pb2.TextSegment(index=index, text=text))
        self._watch.owe()
        await self._send(message, lambda: (self._segments.append(message), self._unfinished.add(index)))

    async def end(self) -> None:
        self._watch.owe()
        await self._send(None, lambda: setattr(self, "_ended", True))

    async def _send(self, message: speech_pb2.SynthesizeRequest | None, remember: Callable[[], object]) -> None:
        """Remembers the message for a replay and writes it, both under the switch lock, so that a move to
        another replica sends it exactly once."""
        async with self._switch:
            remember()
            call = self._call
            try:
                await self._write(call, message)
                return
            except BackendError as error:
                failed = error
        await self._move_on(call, failed)  # the new call gets this message in the replay

    def cancel(self) -> None:
        self._cancelled = True
        self._hold(None)
        if self._call is not None:
            self._call.cancel()

    async def events(self) -> AsyncIterator[SpeechEvent]:
        try:
            async for event in self._events():
                yield event
        finally:
            self._hold(None)

    async def _events(self) -> AsyncIterator[SpeechEvent]:
        while True:
            call = self._call
            try:
                with rpc_errors("speech"):
                    response = await self._watch.read(call)
            except BackendError as error:
                await self._move_on(call, error)
                continue
            if response is grpc.aio.EOF:
                return
            self._answered = True
            kind = response.WhichOneof("event")
            if kind == "audio":
                self._watch.answered(still_owed=True)
                yield SpeechAudio(response.audio.pcm, response.audio.sample_rate_hz, response.audio.segment_index)
            elif kind == "segment_done":
                done = response.segment_done
                self._unfinished.discard(done.segment_index)
                self._watch.answered(still_owed=bool(self._unfinished) or self._ended)
                yield SpeechSegmentDone(
                    done.segment_index, done.codec_tokens,
                    reason_name(speech_pb2.SegmentFinishReason, done.finish_reason), stage_times(done.timings),
                )
            elif kind == "done":
                self._watch.answered(still_owed=False)
                yield SpeechDone(reason_name(speech_pb2.SynthesisEndReason, response.done.reason))


class GrpcSpeech(GrpcBackend):
    service = "speech"
    stub_class = speech_pb2_grpc.SpeechStub

    @property
    def deadlines(self) -> CallDeadlines:
        return self._deadlines

    async def connected(self, replica: Replica):
        return await self._connected(replica)

    async def open(self, ids: CallIds) -> GrpcSpeechStream:
        stream = GrpcSpeechStream(self, ids, await self._attempts())
        await stream.connect()
        return stream
