"""Backends that reach the model services over gRPC.

Embedding rows arrive from the encoders and leave for the LLM as wire tensors: checked, joined by bytes,
never decoded into numbers here.

Every call has a deadline (services/orchestrator/deadlines.py): a total one for unary calls and media
encodings, a first-answer and a between-answers one for streams. A call that fails before it produced
anything (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED) is tried once more on another replica when
the address lists several (services/orchestrator/replicas.py); the speech stream replays the segments it
was given. A failure after output is the turn's error: what was delivered stays delivered. The audio
stream is not retried: the audio it has taken lives in the failed replica.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from contextlib import contextmanager
from typing import AsyncIterator, Awaitable, Callable, TypeVar

import grpc

from services.orchestrator.backends import (
    BackendError,
    CallIds,
    EncodedMedia,
    LLMDelta,
    LLMDone,
    LLMFacts,
    PromptPiece,
    SpeechAudio,
    SpeechDone,
    SpeechEvent,
    SpeechSegmentDone,
    StageTime,
    TokenPiece,
    VadParameters,
    VoiceDropped,
    VoiceEvent,
    VoiceFormat,
    VoiceSpeechStarted,
    VoiceSpeechStopped,
    VoiceUtterance,
)
from services.orchestrator.deadlines import CallDeadlines, StreamWatch, deadline_error, within
from services.orchestrator.replicas import Replica, Replicas
from shared.retry_hint import retry_after_ms
from shared.wire_tensor import TensorDecodeError, WireTensor, concat_rows
from shared.weights_info import describe as describe_weights
from vita.audio.v1 import audio_pb2, audio_pb2_grpc
from vita.common.v1 import common_pb2
from vita.llm.v1 import llm_pb2, llm_pb2_grpc
from vita.speech.v1 import speech_pb2, speech_pb2_grpc
from vita.vision.v1 import vision_pb2, vision_pb2_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")

# Failures that leave nothing behind on the replica: the call may go to another one.
RETRYABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})
# Writing to a call that has already ended raises one of these; its status arrives on the read side.
_WRITE_AFTER_END = (asyncio.InvalidStateError, grpc.aio.UsageError)


def call_context(ids: CallIds) -> common_pb2.CallContext:
    ctx = common_pb2.CallContext(session_id=ids.session_id, turn_id=ids.turn_id)
    if ids.seed is not None:
        ctx.seed = ids.seed
    return ctx


def reason_name(enum_type, value: int) -> str:
    """A reason enum as the lowercase word the backends use: FinishReason STOP → "stop"."""
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum_type.DESCRIPTOR.name).upper() + "_"
    return enum_type.Name(value).removeprefix(prefix).lower()


def stage_times(timings) -> tuple[StageTime, ...]:
    return tuple(StageTime(t.stage, t.queue_ns, t.compute_ns) for t in timings)


def backend_error(service: str, error: grpc.aio.AioRpcError, stage: str | None = None,
                  timeout_s: float | None = None) -> BackendError:
    code = error.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        if stage is not None and timeout_s is not None:
            return deadline_error(service, f"did not finish {stage}", timeout_s)
        return BackendError("DEADLINE_EXCEEDED", f"the {service} service did not answer in time; try again shortly")
    if code == grpc.StatusCode.UNAVAILABLE:
        return BackendError("UNAVAILABLE", f"the {service} service is unavailable; try again shortly")
    if code == grpc.StatusCode.INTERNAL:
        # Internal details stay in the service's log; the client gets a message it can act on.
        return BackendError("INTERNAL", f"the {service} service failed")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        retry_ms = retry_after_ms(error.trailing_metadata())
        hint = f"; retry in {retry_ms} ms" if retry_ms else ""
        return BackendError("RESOURCE_EXHAUSTED", f"the {service} service is at capacity{hint}")
    return BackendError(code.name, error.details() or f"{service} call failed")


@contextmanager
def rpc_errors(service: str, stage: str | None = None, timeout_s: float | None = None):
    """A failed call to a model service becomes a BackendError the turn can report."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise backend_error(service, error, stage, timeout_s) from None


async def wait_connected(channel: grpc.aio.Channel, service: str, timeout_s: float) -> None:
    """Fails fast with UNAVAILABLE instead of letting a call hang on a dead address."""
    try:
        await asyncio.wait_for(channel.channel_ready(), timeout_s)
    except asyncio.TimeoutError:
        raise BackendError("UNAVAILABLE", f"the {service} service is unavailable; try again shortly") from None


def as_replicas(service: str, source: Replicas | grpc.aio.Channel) -> Replicas:
    return source if isinstance(source, Replicas) else Replicas(service, [Replica(service, source)], retry=False)


def as_deadlines(source: CallDeadlines | float) -> CallDeadlines:
    return source if isinstance(source, CallDeadlines) else CallDeadlines(connect_s=float(source))


class _Backend:
    """One model service: its replicas, a stub per replica, deadlines, and retry on another replica."""

    service = ""
    stub_class: type = object

    def __init__(self, replicas: Replicas | grpc.aio.Channel, deadlines: CallDeadlines | float):
        self._replicas = as_replicas(self.service, replicas)
        self._deadlines = as_deadlines(deadlines)
        self._stubs = {replica: self.stub_class(replica.channel) for replica in self._replicas.replicas}

    async def _connected(self, replica: Replica):
        await wait_connected(replica.channel, self.service, self._deadlines.connect_s)
        return self._stubs[replica]

    async def _call(self, attempt: Callable[[Replica], Awaitable[T]], key: str | None = None) -> T:
        """`attempt` on the first replica; once more on another one if it failed retryably."""
        attempts = self._replicas.attempts(key)
        for index, replica in enumerate(attempts):
            try:
                with replica.busy():
                    return await attempt(replica)
            except BackendError as error:
                if index + 1 == len(attempts) or error.code not in RETRYABLE:
                    raise
                log.warning("%s call to %s failed (%s); retrying on %s", self.service, replica.target, error.code,
                            attempts[index + 1].target)
        raise AssertionError("unreachable: attempts is never empty")


class GrpcLLM(_Backend):
    service = "llm"
    stub_class = llm_pb2_grpc.LLMStub

    async def describe(self) -> LLMFacts:
        async def attempt(replica: Replica) -> llm_pb2.DescribeResponse:
            stub = await self._connected(replica)
            with rpc_errors("llm", "describing the model", self._deadlines.call_s):
                return await stub.Describe(llm_pb2.DescribeRequest(), timeout=self._deadlines.call_s)

        reply = await self._call(attempt)
        return LLMFacts(
            max_context_tokens=reply.max_context_tokens,
            hidden_size=reply.hidden_size,
            eos_token_id=reply.eos_token_id,
            weights=describe_weights(reply.weights),
        )

    async def release_session(self, session_id: str) -> None:
        request = llm_pb2.ReleaseSessionRequest(ctx=common_pb2.CallContext(session_id=session_id))

        async def release(replica: Replica) -> None:
            try:
                await self._stubs[replica].ReleaseSession(request, timeout=self._deadlines.call_s)
            except grpc.aio.AioRpcError:
                pass  # a cache entry only: it ages out of the LRU anyway

        # Every replica: the session's cache may sit on one it was sent to while its own was down.
        await asyncio.gather(*(release(replica) for replica in self._replicas.replicas))

    async def generate(
        self, ids: CallIds, prompt: list[PromptPiece], *, max_new_tokens: int, temperature: float, top_p: float
    ) -> AsyncIterator[LLMDelta | LLMDone]:
        request = llm_pb2.GenerateRequest(
            ctx=call_context(ids),
            segments=[_segment(piece) for piece in prompt],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
        )
        # Keyed by session: the replica that holds the session's KV cache, the same from every orchestrator.
        attempts = self._replicas.attempts(ids.session_id)
        for index, replica in enumerate(attempts):
            produced = False
            try:
                with replica.busy():
                    async for item in self._generate_on(replica, request):
                        produced = True
                        yield item
                return
            except BackendError as error:
                if produced or index + 1 == len(attempts) or error.code not in RETRYABLE:
                    raise
                log.warning("llm call to %s failed before its first token (%s); retrying on %s",
                            replica.target, error.code, attempts[index + 1].target)

    async def _generate_on(self, replica: Replica, request: llm_pb2.GenerateRequest) -> AsyncIterator[LLMDelta | LLMDone]:
        stub = await self._connected(replica)
        call = stub.Generate(request)
        watch = StreamWatch("llm", self._deadlines, owed=True, first_what="sent no first token",
                            idle_what="stalled mid-reply: no token")
        try:
            with rpc_errors("llm"):
                while True:
                    response = await watch.read(call)
                    if response is grpc.aio.EOF:
                        return
                    watch.answered(still_owed=True)
                    if response.HasField("delta"):
                        yield LLMDelta(tuple(response.delta.token_ids), response.delta.text)
                    else:
                        done = response.done
                        yield LLMDone(
                            finish_reason=reason_name(llm_pb2.FinishReason, done.finish_reason),
                            prompt_tokens=done.prompt_tokens,
                            cached_tokens=done.cached_tokens,
                            prefilled_tokens=done.prefilled_tokens,
                            generated_tokens=done.generated_tokens,
                            timings=stage_times(done.timings),
                        )
        finally:
            call.cancel()


def _segment(piece: PromptPiece) -> llm_pb2.Segment:
    if isinstance(piece, TokenPiece):
        return llm_pb2.Segment(tokens=llm_pb2.TokenIds(ids=piece.ids))
    span = llm_pb2.EmbeddingSpan(content_id=piece.content_id, num_rows=piece.num_rows)
    if piece.rows is not None:
        span.rows.CopyFrom(piece.rows.to_message())
    return llm_pb2.Segment(embeddings=span)


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
        """Counts this stream against the replica it runs on (least-busy picks), and no longer the last."""
        if self._held is not None:
            self._held.in_flight -= 1
        self._held = replica
        if replica is not None:
            replica.in_flight += 1

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
        except _WRITE_AFTER_END:
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


class GrpcSpeech(_Backend):
    service = "speech"
    stub_class = speech_pb2_grpc.SpeechStub

    @property
    def deadlines(self) -> CallDeadlines:
        return self._deadlines

    async def connected(self, replica: Replica):
        return await self._connected(replica)

    async def open(self, ids: CallIds) -> GrpcSpeechStream:
        stream = GrpcSpeechStream(self, ids, self._replicas.attempts())
        await stream.connect()
        return stream


# ----- media encoders -----


def embedding_rows(service: str, *messages: common_pb2.Tensor) -> WireTensor:
    """Rows as an encoder sent them (one message, or one per tile or frame), checked and joined."""
    if not messages:
        raise BackendError("INTERNAL", f"the {service} service returned no embeddings")
    try:
        return concat_rows([WireTensor.from_message(message) for message in messages])
    except TensorDecodeError:
        raise BackendError("INTERNAL", f"the {service} service returned malformed embeddings") from None


async def _collect_embeddings(call, kind: str, service: str, timeout_s: float) -> EncodedMedia:
    chunks, timings = [], ()
    with rpc_errors(service, f"encoding the {kind}", timeout_s):
        async for chunk in call:
            chunks.append(chunk.embeddings)
            if chunk.timings:
                timings = stage_times(chunk.timings)
    return EncodedMedia(kind, embedding_rows(service, *chunks), timings)


class GrpcVision(_Backend):
    service = "vision"
    stub_class = vision_pb2_grpc.VisionStub

    async def _encode(self, kind: str, method: str, request) -> EncodedMedia:
        timeout = self._deadlines.encode_s

        async def attempt(replica: Replica) -> EncodedMedia:
            stub = await self._connected(replica)
            return await _collect_embeddings(getattr(stub, method)(request, timeout=timeout), kind, "vision", timeout)

        return await self._call(attempt)

    async def encode_image(self, ids: CallIds, data: bytes, max_tiles: int) -> EncodedMedia:
        request = vision_pb2.EncodeImageRequest(
            ctx=call_context(ids), image=common_pb2.MediaBlob(data=data), max_tiles=max_tiles
        )
        return await self._encode("image", "EncodeImage", request)

    async def encode_video(self, ids: CallIds, data: bytes) -> EncodedMedia:
        request = vision_pb2.EncodeVideoRequest(ctx=call_context(ids), video=common_pb2.MediaBlob(data=data))
        return await self._encode("video", "EncodeVideo", request)

    async def encode_frames(self, ids: CallIds, frames: list[tuple[int, bytes]]) -> EncodedMedia:
        request = vision_pb2.EncodeFramesRequest(
            ctx=call_context(ids),
            frames=[vision_pb2.CameraFrame(timestamp_ms=ts, jpeg=jpeg) for ts, jpeg in frames],
        )
        return await self._encode("video", "EncodeFrames", request)


_ENCODINGS = {"pcm16": audio_pb2.SAMPLE_ENCODING_PCM16, "f32": audio_pb2.SAMPLE_ENCODING_F32}


class GrpcVoiceStream:
    """One audio stream. It owes an answer (an utterance or a drop) after each commit; writes must be taken
    within the idle deadline."""

    def __init__(self, call, deadlines: CallDeadlines):
        self._call = call
        self._idle_s = deadlines.idle_s
        self._watch = StreamWatch("audio", deadlines, first_what="did not answer the audio commit",
                                  idle_what="stalled: no answer to the audio commit")

    async def _write(self, message: audio_pb2.AudioInput, what: str) -> None:
        try:
            with rpc_errors("audio"):
                await within(self._call.write(message), self._idle_s, deadline_error("audio", what, self._idle_s))
        except BackendError as error:
            if error.code == "DEADLINE_EXCEEDED":
                self._watch.fail(error)  # the service is stalled: the event reader reports it and ends
            raise

    async def send(self, pcm: bytes) -> None:
        await self._write(audio_pb2.AudioInput(chunk=audio_pb2.PcmChunk(data=pcm)), "did not take audio")

    async def commit(self) -> None:
        self._watch.owe()
        await self._write(audio_pb2.AudioInput(commit=audio_pb2.Commit()), "did not take the audio commit")

    def close(self) -> None:
        self._call.cancel()

    async def events(self) -> AsyncIterator[VoiceEvent]:
        with rpc_errors("audio"):
            while True:
                response = await self._watch.read(self._call)
                if response is grpc.aio.EOF:
                    return
                kind = response.WhichOneof("event")
                if kind == "speech_started":
                    yield VoiceSpeechStarted(response.speech_started.offset_ms)
                elif kind == "speech_stopped":
                    yield VoiceSpeechStopped(response.speech_stopped.offset_ms)
                elif kind == "utterance":
                    self._watch.answered(still_owed=False)
                    u = response.utterance
                    clip = EncodedMedia("audio", embedding_rows("audio", u.embeddings), stage_times(u.timings))
                    yield VoiceUtterance(u.index, clip, u.pcm16k, u.duration_ms, u.eos_to_ready_ns)
                elif kind == "dropped":
                    self._watch.answered(still_owed=False)
                    yield VoiceDropped(reason_name(audio_pb2.DropReason, response.dropped.reason), response.dropped.duration_ms)


class GrpcAudio(_Backend):
    service = "audio"
    stub_class = audio_pb2_grpc.AudioStub

    async def open_stream(self, ids: CallIds, fmt: VoiceFormat, vad: VadParameters) -> GrpcVoiceStream:
        start = audio_pb2.StreamStart(
            ctx=call_context(ids),
            format=audio_pb2.AudioFormat(sample_rate_hz=fmt.sample_rate_hz, encoding=_ENCODINGS[fmt.encoding]),
            vad=audio_pb2.VadConfig(**dataclasses.asdict(vad)),
        )

        async def attempt(replica: Replica) -> GrpcVoiceStream:
            stub = await self._connected(replica)
            stream = GrpcVoiceStream(stub.StreamAudio(), self._deadlines)
            await stream._write(audio_pb2.AudioInput(start=start), "did not take the stream's start")
            return stream

        return await self._call(attempt)

    async def encode_clip(self, ids: CallIds, pcm16k: bytes) -> EncodedMedia:
        request = audio_pb2.EncodeClipRequest(
            ctx=call_context(ids), pcm=pcm16k,
            format=audio_pb2.AudioFormat(sample_rate_hz=16000, encoding=audio_pb2.SAMPLE_ENCODING_PCM16),
        )
        timeout = self._deadlines.encode_s

        async def attempt(replica: Replica) -> EncodedMedia:
            stub = await self._connected(replica)
            with rpc_errors("audio", "encoding the audio clip", timeout):
                reply = await stub.EncodeClip(request, timeout=timeout)
            return EncodedMedia("audio", embedding_rows("audio", reply.embeddings), stage_times(reply.timings))

        return await self._call(attempt)
