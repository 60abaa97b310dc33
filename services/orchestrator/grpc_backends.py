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
from typing import AsyncIterator

import grpc

from services.orchestrator.backends import (
    BackendError,
    CallIds,
    EncodedMedia,
    LLMDelta,
    LLMDone,
    LLMFacts,
    PromptPiece,
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
from services.orchestrator.grpc_calls import (  # noqa: F401 - re-exported: the backends' shared helpers
    RETRYABLE,
    GrpcBackend,
    backend_error,
    call_context,
    reason_name,
    rpc_errors,
    stage_times,
    wait_connected,
)
from services.orchestrator.grpc_speech import GrpcSpeech, GrpcSpeechStream  # noqa: F401 - re-exported
from services.orchestrator.replicas import Replica
from shared.wire_tensor import TensorDecodeError, WireTensor, concat_rows
from shared.weights_info import describe as describe_weights
from vita.audio.v1 import audio_pb2, audio_pb2_grpc
from vita.common.v1 import common_pb2
from vita.llm.v1 import llm_pb2, llm_pb2_grpc
from vita.vision.v1 import vision_pb2, vision_pb2_grpc

log = logging.getLogger(__name__)

class GrpcLLM(GrpcBackend):
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
                await replica.stub(self.stub_class).ReleaseSession(request, timeout=self._deadlines.call_s)
            except grpc.aio.AioRpcError:
                pass  # a cache entry only: it ages out of the LRU anyway

        # Every replica: the session's cache may sit on one it was sent to while its own was down.
        try:
            await self._replicas.ready()
        except BackendError:
            return  # none resolved: nothing holds the cache
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
        attempts = await self._attempts(ids.session_id)
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


class GrpcVision(GrpcBackend):
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


class GrpcAudio(GrpcBackend):
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
