"""The StreamAudio RPC: PCM chunks in, VAD events and utterance embeddings out, one call per client
conversation.

How a call runs:
* A reader task takes the client's messages in order. Each chunk / commit runs `AudioStream.push` /
  `commit` on the feature threads (VAD, resampling, fbank are CPU work; the event loop never runs them)
  and appends the events it returns to the call's event queue, then reads the next message. It never
  waits for an encode, so audio intake goes on while an utterance is being encoded.
* The response loop sends the queued events in order. At a `SpeechStopped` that carries an utterance
  future it sends the stop, then awaits the future and sends the `Utterance` before any later event:
  every utterance follows its speech_stopped and precedes whatever the client said next.
* Client half-close = "end drains": the utterance in progress is finished and encoded, everything queued
  is sent, then the response stream ends (OK). Client cancel = "cancel drops": the utterance in progress
  is dropped and the stream forgotten; an encode already running completes and is discarded. (gRPC may
  report a cancel to the reader as the end of input just before it cancels the call; the flush that
  starts then is wasted work, its utterance counted as cancelled.)
* Bad audio ends the call with INVALID_ARGUMENT after the events queued before it, with a message that
  names the chunk and what to fix. A too-long utterance is not an error here: it arrives as
  speech_stopped + dropped{reason: "too_long"} and the stream goes on (the orchestrator reports it).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from services.audio import metrics
from services.audio.config import AudioSettings
from services.audio.engine import AudioEngine, EngineStoppedError
from services.audio.events import AudioEvent, SpeechStopped, UtteranceDropped
from services.audio.features import AudioInputError
from services.audio.rpc.futures import awaitable
from services.audio.rpc.messages import INTERNAL_MESSAGE, UNAVAILABLE_MESSAGE, event_message, utterance_message
from services.audio.stream import AudioStream
from services.audio.rpc.validation import RequestRejected, sample_rate, stream_encoding, vad_config
from vita.audio.v1 import audio_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Abort:
    """Put on a stream's event queue by its reader: the response loop ends the call with this status."""

    code: grpc.StatusCode
    message: str
    outcome: str


_END = object()  # the client half-closed and every event is queued


def _count_unsent(events: list[AudioEvent], drops_counted: bool = False) -> None:
    """Metrics for events of a call that ended before they could be sent."""
    for event in events:
        if isinstance(event, SpeechStopped) and event.utterance is not None:
            metrics.UTTERANCES.labels("cancelled").inc()  # flushed or encoded for nobody
        elif isinstance(event, UtteranceDropped) and not drops_counted:
            metrics.UTTERANCES.labels(event.reason.value).inc()


def _count_unsent_result(done: Future[list[AudioEvent]]) -> None:
    if not done.cancelled() and done.exception() is None:
        _count_unsent(done.result())


class _StreamCall:
    """One StreamAudio call: its stream, the events waiting to be sent, and what ending it early must undo.

    Stream work runs on the feature threads, one call at a time per stream (the reader awaits each).
    `close()` ("cancel drops") marks the call closed so that work not started yet is skipped; work already
    running finishes under the stream's lock, then `stream.cancel()` drops the utterance in progress.
    """

    def __init__(self, stream: AudioStream, features: ThreadPoolExecutor) -> None:
        self.stream = stream
        self.events: asyncio.Queue[AudioEvent | _Abort | object] = asyncio.Queue()
        self._features = features
        self._closed = False  # written on the event loop, read on feature threads

    async def run(self, function: Callable[..., list[AudioEvent]], *args) -> list[AudioEvent]:
        def unless_closed() -> list[AudioEvent]:
            return [] if self._closed else function(*args)

        future = self._features.submit(unless_closed)
        try:
            return await awaitable(future)
        except asyncio.CancelledError:
            # The call ended while the work ran: it finishes, and its events are never sent.
            future.add_done_callback(_count_unsent_result)
            raise

    def queue(self, new_events: list[AudioEvent]) -> None:
        for event in new_events:
            if isinstance(event, UtteranceDropped):
                metrics.UTTERANCES.labels(event.reason.value).inc()
            self.events.put_nowait(event)

    def close(self) -> None:
        """The call ended without draining (client cancel, error): drop everything of this stream."""
        self._closed = True
        while not self.events.empty():
            _count_unsent([self.events.get_nowait()], drops_counted=True)
        try:
            # On a feature thread: a push still running holds the stream's lock; nothing waits for this.
            self._features.submit(lambda: _count_unsent(self.stream.cancel()))
        except RuntimeError:  # the pool is shut down (service stopping): the stream goes with the process
            log.debug("feature pool closed; stream state left to the garbage collector")


class StreamAudioHandler:
    """Serves StreamAudio calls and keeps the open streams (their count is the server's load)."""

    def __init__(self, engine: AudioEngine, features: ThreadPoolExecutor, settings: AudioSettings) -> None:
        self._engine = engine
        self._features = features
        self._settings = settings
        self._streams: dict[str, AudioStream] = {}

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    async def serve(self, request_iterator, context) -> AsyncIterator[audio_pb2.AudioOutput]:
        """The whole call, once the servicer has checked that the models are loaded."""
        try:
            first = await anext(request_iterator)
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the stream ended before its `start` message")
        if first.WhichOneof("msg") != "start":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be `start`")
        start = first.start
        try:
            stream = self._open_stream(start)
        except (RequestRejected, AudioInputError) as error:
            metrics.STREAMS.labels("invalid").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, getattr(error, "message", str(error)))
        if len(self._streams) >= self._settings.max_streams:
            metrics.STREAMS.labels("rejected").inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this audio server has its limit of {self._settings.max_streams} open streams; retry later",
            )

        stream_id = f"{start.ctx.session_id}/{uuid.uuid4().hex[:8]}"
        call = _StreamCall(stream, self._features)
        self._streams[stream_id] = stream
        metrics.ACTIVE_STREAMS.inc()
        log.debug("audio stream %s opened (%d Hz %s, vad %s)", stream_id, stream.sample_rate_hz,
                  stream.encoding.value, stream.vad_enabled)
        reader = asyncio.create_task(self._read_input(request_iterator, call, stream_id))
        outcome = "cancelled"
        in_hand: SpeechStopped | None = None  # taken from the queue, its utterance not yet handed to gRPC
        try:
            while True:
                item = await call.events.get()
                if item is _END:
                    outcome = "completed"
                    return
                if isinstance(item, _Abort):
                    outcome = item.outcome
                    await context.abort(item.code, item.message)
                if isinstance(item, SpeechStopped) and item.utterance is not None:
                    in_hand = item
                yield event_message(item)
                if in_hand is not None:
                    # Later events wait in the queue (the reader keeps taking audio meanwhile).
                    try:
                        ready = await awaitable(in_hand.utterance)
                    except EngineStoppedError:
                        outcome = "unavailable"
                        await context.abort(grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_MESSAGE)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        outcome = "failed"
                        log.exception("encoding utterance %d of stream %s failed", in_hand.utterance_index, stream_id)
                        await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
                    in_hand = None
                    yield utterance_message(ready)
        finally:
            reader.cancel()
            del self._streams[stream_id]
            metrics.ACTIVE_STREAMS.dec()
            metrics.STREAMS.labels(outcome).inc()
            log.debug("audio stream %s closed: %s", stream_id, outcome)
            if in_hand is not None:
                metrics.UTTERANCES.labels("cancelled" if outcome == "cancelled" else "failed").inc()
            if outcome != "completed":
                call.close()

    def _open_stream(self, start: audio_pb2.StreamStart) -> AudioStream:
        if not start.ctx.session_id:
            raise RequestRejected("start.ctx.session_id is required")
        rate = sample_rate(start.format)
        encoding = stream_encoding(start.format)
        config = vad_config(start.vad, self._settings.max_utterance_limit_ms)
        return self._engine.new_stream(config, rate, encoding, vad_enabled=start.vad.enabled)

    async def _read_input(self, request_iterator, call: _StreamCall, stream_id: str) -> None:
        """Feeds the client's messages to the stream in order and queues the resulting events."""
        stream = call.stream
        bytes_per_second = stream.sample_rate_hz * stream.encoding.bytes_per_sample
        max_chunk_bytes = bytes_per_second * self._settings.max_chunk_ms // 1000
        chunk_index = 0
        received_bytes = 0
        try:
            async for message in request_iterator:
                kind = message.WhichOneof("msg")
                if kind == "chunk":
                    data = message.chunk.data
                    where = f"audio chunk {chunk_index} ({received_bytes / bytes_per_second:.2f} s into the stream)"
                    if len(data) > max_chunk_bytes:
                        raise RequestRejected(
                            f"{where} has {len(data)} bytes; at most {max_chunk_bytes} bytes "
                            f"({self._settings.max_chunk_ms} ms of {stream.encoding.value} at {stream.sample_rate_hz} Hz) "
                            f"per chunk; send 20-100 ms chunks"
                        )
                    received = time.perf_counter()
                    try:
                        call.queue(await call.run(stream.push, data))
                    except AudioInputError as error:
                        raise RequestRejected(f"{where}: {error}") from None
                    metrics.VAD_LAG_SECONDS.observe(time.perf_counter() - received)
                    metrics.AUDIO_SECONDS.inc(len(data) / bytes_per_second)
                    chunk_index += 1
                    received_bytes += len(data)
                elif kind == "commit":
                    call.queue(await call.run(stream.commit))
                elif kind == "start":
                    raise RequestRejected("`start` may only be the first message of a stream")
                else:
                    raise RequestRejected("an AudioInput message must set `chunk` or `commit`")
            # The client half-closed: "end drains" (the utterance in progress is finished and encoded).
            # A client cancel can also end the request stream just before the call is cancelled; then
            # `call.close()` has either run already (this is a no-op) or drops what this flushed.
            call.queue(await call.run(stream.end_of_input))
            call.events.put_nowait(_END)
        except RequestRejected as error:
            call.events.put_nowait(_Abort(grpc.StatusCode.INVALID_ARGUMENT, error.message, "invalid"))
        except EngineStoppedError:
            call.events.put_nowait(_Abort(grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_MESSAGE, "unavailable"))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("audio stream %s failed", stream_id)
            call.events.put_nowait(_Abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, "failed"))
