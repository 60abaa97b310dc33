"""Backends that reach the model services over gRPC.

Embedding rows arrive from the encoders and leave for the LLM as wire tensors: checked, joined by bytes,
never decoded into numbers here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from contextlib import contextmanager
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
from shared.wire_tensor import TensorDecodeError, WireTensor, concat_rows
from shared.weights_info import describe as describe_weights
from vita.audio.v1 import audio_pb2, audio_pb2_grpc
from vita.common.v1 import common_pb2
from vita.llm.v1 import llm_pb2, llm_pb2_grpc
from vita.speech.v1 import speech_pb2, speech_pb2_grpc
from vita.vision.v1 import vision_pb2, vision_pb2_grpc


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


def backend_error(service: str, error: grpc.aio.AioRpcError) -> BackendError:
    code = error.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return BackendError("UNAVAILABLE", f"the {service} service is unavailable; try again shortly")
    if code == grpc.StatusCode.INTERNAL:
        # Internal details stay in the service's log; the client gets a message it can act on.
        return BackendError("INTERNAL", f"the {service} service failed")
    return BackendError(code.name, error.details() or f"{service} call failed")


@contextmanager
def rpc_errors(service: str):
    """A failed call to a model service becomes a BackendError the turn can report."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise backend_error(service, error) from None


async def wait_connected(channel: grpc.aio.Channel, service: str, timeout_s: float) -> None:
    """Fails fast with UNAVAILABLE instead of letting a call hang on a dead address."""
    try:
        await asyncio.wait_for(channel.channel_ready(), timeout_s)
    except asyncio.TimeoutError:
        raise BackendError("UNAVAILABLE", f"the {service} service is unavailable; try again shortly") from None


class GrpcLLM:
    def __init__(self, channel: grpc.aio.Channel, connect_timeout_s: float):
        self._channel = channel
        self._stub = llm_pb2_grpc.LLMStub(channel)
        self._connect_timeout_s = connect_timeout_s

    async def describe(self) -> LLMFacts:
        await wait_connected(self._channel, "llm", self._connect_timeout_s)
        with rpc_errors("llm"):
            reply = await self._stub.Describe(llm_pb2.DescribeRequest(), timeout=self._connect_timeout_s)
        return LLMFacts(
            max_context_tokens=reply.max_context_tokens,
            hidden_size=reply.hidden_size,
            eos_token_id=reply.eos_token_id,
            weights=describe_weights(reply.weights),
        )

    async def release_session(self, session_id: str) -> None:
        try:
            await self._stub.ReleaseSession(
                llm_pb2.ReleaseSessionRequest(ctx=common_pb2.CallContext(session_id=session_id)),
                timeout=self._connect_timeout_s,
            )
        except grpc.aio.AioRpcError:
            pass  # a cache entry only: it ages out of the LRU anyway

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
        await wait_connected(self._channel, "llm", self._connect_timeout_s)
        call = self._stub.Generate(request)
        try:
            with rpc_errors("llm"):
                async for response in call:
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
    def __init__(self, call):
        self._call = call

    async def push(self, index: int, text: str) -> None:
        with rpc_errors("speech"):
            await self._call.write(speech_pb2.SynthesizeRequest(segment=speech_pb2.TextSegment(index=index, text=text)))

    async def end(self) -> None:
        with rpc_errors("speech"):
            await self._call.done_writing()

    def cancel(self) -> None:
        self._call.cancel()

    async def events(self) -> AsyncIterator[SpeechEvent]:
        with rpc_errors("speech"):
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    return
                kind = response.WhichOneof("event")
                if kind == "audio":
                    yield SpeechAudio(response.audio.pcm, response.audio.sample_rate_hz, response.audio.segment_index)
                elif kind == "segment_done":
                    done = response.segment_done
                    yield SpeechSegmentDone(
                        done.segment_index, done.codec_tokens,
                        reason_name(speech_pb2.SegmentFinishReason, done.finish_reason), stage_times(done.timings),
                    )
                elif kind == "done":
                    yield SpeechDone(reason_name(speech_pb2.SynthesisEndReason, response.done.reason))


class GrpcSpeech:
    def __init__(self, channel: grpc.aio.Channel, connect_timeout_s: float):
        self._channel = channel
        self._stub = speech_pb2_grpc.SpeechStub(channel)
        self._connect_timeout_s = connect_timeout_s

    async def open(self, ids: CallIds) -> GrpcSpeechStream:
        await wait_connected(self._channel, "speech", self._connect_timeout_s)
        call = self._stub.Synthesize()
        with rpc_errors("speech"):
            await call.write(speech_pb2.SynthesizeRequest(start=speech_pb2.SynthesisStart(ctx=call_context(ids))))
        return GrpcSpeechStream(call)


# ----- media encoders -----


def embedding_rows(service: str, *messages: common_pb2.Tensor) -> WireTensor:
    """Rows as an encoder sent them (one message, or one per tile or frame), checked and joined."""
    if not messages:
        raise BackendError("INTERNAL", f"the {service} service returned no embeddings")
    try:
        return concat_rows([WireTensor.from_message(message) for message in messages])
    except TensorDecodeError:
        raise BackendError("INTERNAL", f"the {service} service returned malformed embeddings") from None


async def _collect_embeddings(call, kind: str, service: str) -> EncodedMedia:
    chunks, timings = [], ()
    with rpc_errors(service):
        async for chunk in call:
            chunks.append(chunk.embeddings)
            if chunk.timings:
                timings = stage_times(chunk.timings)
    return EncodedMedia(kind, embedding_rows(service, *chunks), timings)


class GrpcVision:
    def __init__(self, channel: grpc.aio.Channel, connect_timeout_s: float):
        self._channel = channel
        self._stub = vision_pb2_grpc.VisionStub(channel)
        self._connect_timeout_s = connect_timeout_s

    async def encode_image(self, ids: CallIds, data: bytes, max_tiles: int) -> EncodedMedia:
        await wait_connected(self._channel, "vision", self._connect_timeout_s)
        request = vision_pb2.EncodeImageRequest(
            ctx=call_context(ids), image=common_pb2.MediaBlob(data=data), max_tiles=max_tiles
        )
        return await _collect_embeddings(self._stub.EncodeImage(request), "image", "vision")

    async def encode_video(self, ids: CallIds, data: bytes) -> EncodedMedia:
        await wait_connected(self._channel, "vision", self._connect_timeout_s)
        request = vision_pb2.EncodeVideoRequest(ctx=call_context(ids), video=common_pb2.MediaBlob(data=data))
        return await _collect_embeddings(self._stub.EncodeVideo(request), "video", "vision")

    async def encode_frames(self, ids: CallIds, frames: list[tuple[int, bytes]]) -> EncodedMedia:
        await wait_connected(self._channel, "vision", self._connect_timeout_s)
        request = vision_pb2.EncodeFramesRequest(
            ctx=call_context(ids),
            frames=[vision_pb2.CameraFrame(timestamp_ms=ts, jpeg=jpeg) for ts, jpeg in frames],
        )
        return await _collect_embeddings(self._stub.EncodeFrames(request), "video", "vision")


_ENCODINGS = {"pcm16": audio_pb2.SAMPLE_ENCODING_PCM16, "f32": audio_pb2.SAMPLE_ENCODING_F32}


class GrpcVoiceStream:
    def __init__(self, call):
        self._call = call

    async def send(self, pcm: bytes) -> None:
        with rpc_errors("audio"):
            await self._call.write(audio_pb2.AudioInput(chunk=audio_pb2.PcmChunk(data=pcm)))

    async def commit(self) -> None:
        with rpc_errors("audio"):
            await self._call.write(audio_pb2.AudioInput(commit=audio_pb2.Commit()))

    def close(self) -> None:
        self._call.cancel()

    async def events(self) -> AsyncIterator[VoiceEvent]:
        with rpc_errors("audio"):
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    return
                kind = response.WhichOneof("event")
                if kind == "speech_started":
                    yield VoiceSpeechStarted(response.speech_started.offset_ms)
                elif kind == "speech_stopped":
                    yield VoiceSpeechStopped(response.speech_stopped.offset_ms)
                elif kind == "utterance":
                    u = response.utterance
                    clip = EncodedMedia("audio", embedding_rows("audio", u.embeddings), stage_times(u.timings))
                    yield VoiceUtterance(u.index, clip, u.pcm16k, u.duration_ms, u.eos_to_ready_ns)
                elif kind == "dropped":
                    yield VoiceDropped(reason_name(audio_pb2.DropReason, response.dropped.reason), response.dropped.duration_ms)


class GrpcAudio:
    def __init__(self, channel: grpc.aio.Channel, connect_timeout_s: float):
        self._channel = channel
        self._stub = audio_pb2_grpc.AudioStub(channel)
        self._connect_timeout_s = connect_timeout_s

    async def open_stream(self, ids: CallIds, fmt: VoiceFormat, vad: VadParameters) -> GrpcVoiceStream:
        await wait_connected(self._channel, "audio", self._connect_timeout_s)
        call = self._stub.StreamAudio()
        start = audio_pb2.StreamStart(
            ctx=call_context(ids),
            format=audio_pb2.AudioFormat(sample_rate_hz=fmt.sample_rate_hz, encoding=_ENCODINGS[fmt.encoding]),
            vad=audio_pb2.VadConfig(**dataclasses.asdict(vad)),
        )
        with rpc_errors("audio"):
            await call.write(audio_pb2.AudioInput(start=start))
        return GrpcVoiceStream(call)

    async def encode_clip(self, ids: CallIds, pcm16k: bytes) -> EncodedMedia:
        await wait_connected(self._channel, "audio", self._connect_timeout_s)
        request = audio_pb2.EncodeClipRequest(
            ctx=call_context(ids), pcm=pcm16k,
            format=audio_pb2.AudioFormat(sample_rate_hz=16000, encoding=audio_pb2.SAMPLE_ENCODING_PCM16),
        )
        with rpc_errors("audio"):
            reply = await self._stub.EncodeClip(request)
        return EncodedMedia("audio", embedding_rows("audio", reply.embeddings), stage_times(reply.timings))
