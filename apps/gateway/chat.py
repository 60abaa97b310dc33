"""`POST /v1/chat/completions`: one turn on a fresh vita session (deleted afterwards), answered in OpenAI's
shapes: a `chat.completion` with `message.audio` {id, data, expires_at, transcript}, or, with
`stream: true`, server-sent `chat.completion.chunk`s whose `delta.audio` carries {id, data} (base64
PCM16 at 24 kHz) and {transcript} pieces, then `data: [DONE]`.

A refusal before the reply starts (a bad image, an unknown key, an overloaded orchestrator) is an HTTP
error with OpenAI's error body, streaming or not: the stream starts only once the turn has started."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import AsyncIterator

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

import sdk
from apps.gateway.audio import SPEECH_INPUT_RATE_HZ, b64encode, to_openai_rate, wav_bytes
from apps.gateway.auth import key_from_headers
from apps.gateway.chat_request import CompletionRequest, parse_request
from apps.gateway.errors import GatewayError, from_grpc, from_rpc_error, unauthenticated
from apps.gateway.state import GatewayState

# How long the reply audio of a completion "stays retrievable" in OpenAI's terms; the gateway keeps
# nothing, so this is only the field clients expect.
AUDIO_EXPIRES_S = 3600
# Spoken input goes to the orchestrator in pieces of this size.
AUDIO_PIECE_BYTES = SPEECH_INPUT_RATE_HZ * 2  # 1 s


async def chat_completions(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    api_key = key_from_headers(request.headers.get("authorization"))
    body = await _read_json(request, state.settings.max_request_bytes)
    completion = await parse_request(body, state.settings)
    stack = contextlib.AsyncExitStack()
    try:
        client = await stack.enter_async_context(state.pool.client(api_key))
        run = CompletionRun(client, completion, state)
        stack.push_async_callback(run.close)
        first = await run.start()
    except BaseException as error:
        await stack.aclose()
        if isinstance(error, grpc.aio.AioRpcError):
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                await state.pool.forget(api_key)
                raise unauthenticated() from None
            raise from_rpc_error(error) from None
        raise
    if not completion.stream:
        try:
            async with asyncio.timeout(state.settings.completion_timeout_s):
                events = [first] + [event async for event in run.rest()]
            return JSONResponse(run.completion_body(events))
        except TimeoutError:
            raise GatewayError("the completion did not finish in time", status=504, type="server_error",
                               code="timeout") from None
        finally:
            await stack.aclose()
    return StreamingResponse(_sse(run, first, stack), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


async def _read_json(request: Request, limit: int) -> object:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise GatewayError(f"the request body is larger than {limit} bytes", status=413, code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise GatewayError(f"the request body is larger than {limit} bytes", status=413, code="request_too_large")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise GatewayError("the request body is not valid JSON", code="invalid_json") from None


class CompletionRun:
    """The vita session, conversation and turn behind one completion."""

    def __init__(self, client: sdk.AsyncClient, request: CompletionRequest, state: GatewayState):
        self.client = client
        self.request = request
        self.state = state
        self.id = "chatcmpl-" + uuid.uuid4().hex[:24]
        self.audio_id = "audio_" + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.started_at = time.perf_counter()
        self.session_id = ""
        self.conv: sdk.Conversation | None = None
        self.turn: sdk.Turn | None = None
        self._events: AsyncIterator[sdk.Event] | None = None
        self._finished = False

    async def start(self) -> sdk.Event:
        """Sends the turn; returns its first event once it has started. A refusal raises GatewayError."""
        r = self.request
        config = sdk.SessionConfig(speech_output=r.audio_out, temperature=r.temperature, seed=r.seed,
                                   max_reply_tokens=r.max_tokens, vad=sdk.VoiceActivity(enabled=False))
        session = await self.client.create_session(config)
        self.session_id = session.session_id
        audio = sdk.AudioFormat(SPEECH_INPUT_RATE_HZ, "pcm16") if r.audio_pcm16 is not None else None
        self.conv = self.client.conversation(self.session_id, audio=audio, reconnect=None)
        await self.conv.open()
        media = [sdk.Image(image) for image in r.images]
        if r.audio_pcm16 is not None:
            for offset in range(0, len(r.audio_pcm16), AUDIO_PIECE_BYTES):
                await self.conv.append_audio(r.audio_pcm16[offset: offset + AUDIO_PIECE_BYTES])
            self.turn = await self.conv.commit_audio(media=media)
        else:
            self.turn = await self.conv.send_text(r.text, media=media)
        self._events = self.turn.events()
        try:
            async with asyncio.timeout(self.state.settings.completion_timeout_s):
                first = await anext(self._events)
        except TimeoutError:
            raise GatewayError("the turn did not start in time", status=504, type="server_error",
                               code="timeout") from None
        _raise_for(first)
        return first

    async def rest(self) -> AsyncIterator[sdk.Event]:
        async for event in self._events:
            yield event
            if isinstance(event, (sdk.TurnCompleted, sdk.TurnError, sdk.TurnInterrupted)):
                self._finished = True

    async def close(self) -> None:
        if self.turn is not None and not self.turn.done and not self._finished:
            with contextlib.suppress(Exception):
                await self.turn.cancel()  # the client went away mid-reply
        if self.conv is not None:
            await self.conv.close()
        if self.session_id:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.client.delete_session(self.session_id)

    # ----- shapes -----------------------------------------------------------------------------------

    def completion_body(self, events: list[sdk.Event]) -> dict:
        failure = next((e for e in events if isinstance(e, (sdk.TurnError, sdk.TurnInterrupted))), None)
        if failure is not None:
            _raise_for(failure)
        text = "".join(e.text for e in events if isinstance(e, sdk.TextDelta))
        done = next((e for e in events if isinstance(e, sdk.TurnCompleted)), None)
        message: dict = {"role": "assistant", "content": text, "refusal": None}
        if self.request.audio_out:
            pcm = b"".join(to_openai_rate(e.pcm, e.sample_rate_hz) for e in events if isinstance(e, sdk.AudioChunk))
            data = wav_bytes(pcm) if self.request.audio_format == "wav" else pcm
            message["content"] = None
            message["audio"] = {"id": self.audio_id, "data": b64encode(data), "transcript": text,
                                "expires_at": self.created + AUDIO_EXPIRES_S}
        self._observe_first_audio(events)
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.request.model,
                "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason(done),
                             "logprobs": None}],
                "usage": self.usage(events, done)}

    def chunk(self, delta: dict, finish_reason: str | None = None) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.request.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}

    def finish_reason(self, done: sdk.TurnCompleted | None) -> str:
        limit = self.request.max_tokens
        if done is not None and limit is not None and done.reply_tokens >= limit:
            return "length"
        return "stop"

    def usage(self, events: list[sdk.Event], done: sdk.TurnCompleted | None) -> dict:
        started = next((e for e in events if isinstance(e, sdk.TurnStarted)), None)
        prompt = started.prompt_tokens if started else 0
        text_out = done.reply_tokens if done else 0
        audio_out = done.codec_tokens if done and self.request.audio_out else 0
        return {"prompt_tokens": prompt, "completion_tokens": text_out + audio_out,
                "total_tokens": prompt + text_out + audio_out,
                "prompt_tokens_details": {"cached_tokens": done.cached_prompt_tokens if done else 0, "audio_tokens": 0},
                "completion_tokens_details": {"text_tokens": text_out, "audio_tokens": audio_out,
                                              "reasoning_tokens": 0}}

    def _observe_first_audio(self, events: list[sdk.Event]) -> None:
        first = next((e for e in events if isinstance(e, sdk.AudioChunk)), None)
        if first is not None:
            self.state.metrics.first_audio.labels("chat").observe(first.received_at - self.started_at)


async def _sse(run: CompletionRun, first: sdk.Event, stack: contextlib.AsyncExitStack) -> AsyncIterator[bytes]:
    request = run.request
    events: list[sdk.Event] = [first]
    try:
        role: dict = {"role": "assistant", "content": None if request.audio_out else ""}
        yield _data(run.chunk(role))
        async with asyncio.timeout(run.state.settings.completion_timeout_s):
            async for event in run.rest():
                events.append(event)
                if isinstance(event, sdk.TextDelta):
                    delta = {"audio": {"id": run.audio_id, "transcript": event.text}} if request.audio_out else {"content": event.text}
                    yield _data(run.chunk(delta))
                elif isinstance(event, sdk.AudioChunk) and request.audio_out:
                    pcm = to_openai_rate(event.pcm, event.sample_rate_hz)
                    yield _data(run.chunk({"audio": {"id": run.audio_id, "data": b64encode(pcm)}}))
                elif isinstance(event, (sdk.TurnError, sdk.TurnInterrupted)):
                    yield _data(_failure(event).body())
                    yield b"data: [DONE]\n\n"
                    return
        done = next((e for e in events if isinstance(e, sdk.TurnCompleted)), None)
        final: dict = {}
        if request.audio_out:
            final = {"audio": {"id": run.audio_id, "expires_at": run.created + AUDIO_EXPIRES_S}}
        yield _data(run.chunk(final, run.finish_reason(done)))
        if request.include_usage:
            usage_chunk = run.chunk({})
            usage_chunk["choices"] = []
            usage_chunk["usage"] = run.usage(events, done)
            yield _data(usage_chunk)
        run._observe_first_audio(events)
        yield b"data: [DONE]\n\n"
    except TimeoutError:
        yield _data(GatewayError("the completion did not finish in time", status=504, type="server_error",
                                 code="timeout").body())
        yield b"data: [DONE]\n\n"
    finally:
        await stack.aclose()


def _data(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _failure(event: sdk.Event) -> GatewayError:
    if isinstance(event, sdk.TurnError):
        return from_grpc(event.code, event.message)
    return GatewayError(f"the connection to the orchestrator dropped: {getattr(event, 'reason', '')}", status=503,
                        type="server_error", code="interrupted")


def _raise_for(event: sdk.Event) -> None:
    if isinstance(event, (sdk.TurnError, sdk.TurnInterrupted)):
        raise _failure(event)
