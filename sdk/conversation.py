"""One conversation on a session: a Converse stream that stays open.

Three tasks run per conversation: the link reads server events and routes them (to the handle of the
turn they belong to, or to `events()`), and when the stream drops it interrupts the running turns and
opens a new stream on the same session; the writer sends client events in order, one at a time (a write
cut half-way would break the stream); the optional playback clock reports the simulated play position.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import AsyncIterator, Iterable

import grpc

from sdk.errors import ConversationClosed
from sdk.events import (
    AudioChunk,
    Event,
    PlaybackFlush,
    Ready,
    Reconnected,
    StreamEnded,
    from_proto,
)
from sdk.inbox import EventInbox
from sdk.media import AudioFormat, Media, media_to_proto
from sdk.playback import REPORT_INTERVAL_S, SimulatedPlayback
from sdk.reconnect import RETRIABLE, ReconnectPolicy
from sdk.routing import TurnRouter
from sdk.turn import Turn, TurnResult
from vita.assistant.v1 import assistant_pb2 as pb
from vita.assistant.v1 import assistant_pb2_grpc

log = logging.getLogger(__name__)

# A server that accepted the connection but sends no Ready within this is treated as down.
READY_TIMEOUT_S = 15.0
_WRITE_FAILURES = (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError)


class _LocalCancel(Exception):
    """The call was cancelled on this side (not by `close()`): the stream is over, no reconnect."""


class _Outgoing:
    def __init__(self, event: pb.ClientEvent, droppable: bool, turn: Turn | None, audio_ms: float):
        self.event = event
        # Live input (audio, frames, positions, cancels) is dropped while the stream is down; a turn waits.
        self.droppable = droppable
        self.turn = turn  # the turn this event starts
        self.audio_ms = audio_ms
        self.sent = asyncio.get_running_loop().create_future()


class Conversation:
    """`async with client.conversation(session_id) as conv:` then `await conv.ask("Hi")`, or stream:
    `turn = await conv.send_text("Hi")` / `append_audio` + `commit_audio`, and `async for e in conv.events()`."""

    def __init__(self, stub: assistant_pb2_grpc.AssistantStub, metadata, session_id: str, *,
                 audio: AudioFormat | None = None, reconnect: ReconnectPolicy | None = ReconnectPolicy(),
                 simulate_playback: bool = False):
        self.session_id = session_id
        self.audio = audio
        self.ready: Ready | None = None  # the latest stream's Ready
        self._stub = stub
        self._metadata = metadata
        self._policy = reconnect
        self._call = None
        self._connected = asyncio.Event()
        self._ended = asyncio.Event()
        self._closing = False
        self._inbox = EventInbox(session_id)
        self._playback = SimulatedPlayback() if simulate_playback else None
        self._router = TurnRouter(self._inbox.put, self.cancel, self._on_turn_end)
        self._outbox: asyncio.Queue[_Outgoing] = asyncio.Queue()
        self._pending: set[asyncio.Future] = set()
        self._dropped_audio_ms = 0.0
        self._tasks: list[asyncio.Task] = []

    # ----- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> Ready:
        """Opens the stream; a refusal (NOT_FOUND, UNAUTHENTICATED, ...) raises grpc.aio.AioRpcError."""
        if self._tasks:
            return self.ready
        ready = await self._connect()
        self._tasks = [asyncio.create_task(self._link(), name="vita-sdk-link"),
                       asyncio.create_task(self._write_loop(), name="vita-sdk-writer")]
        if self._playback is not None:
            self._tasks.append(asyncio.create_task(self._report_playback_loop(), name="vita-sdk-playback"))
        return ready

    async def close(self) -> None:
        """Ends the stream at once; a turn still running is cancelled by the server (a client that left)."""
        if self._closing:
            return
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._call is not None:
            self._call.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._end(None, "closed by the client")

    async def __aenter__(self) -> "Conversation":
        await self.open()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def dropped_events(self) -> int:
        """Events dropped because events() was not read (see EventInbox)."""
        return self._inbox.dropped

    @property
    def call(self):
        """The current grpc.aio call (low level; it changes after a reconnect)."""
        return self._call

    # ----- sending --------------------------------------------------------------------------------

    async def ask(self, text: str, *, media: Iterable[Media] = (), turn_id: str | None = None,
                  seed: int | None = None, max_reply_tokens: int | None = None,
                  timeout: float | None = None) -> TurnResult:
        """A typed turn, waited for: its result, or TurnFailed / TurnInterruptedError / TimeoutError."""
        turn = await self.send_text(text, media=media, turn_id=turn_id, seed=seed, max_reply_tokens=max_reply_tokens)
        return await turn.result(timeout)

    async def send_text(self, text: str, *, media: Iterable[Media] = (), turn_id: str | None = None,
                        seed: int | None = None, max_reply_tokens: int | None = None) -> Turn:
        message = pb.UserTurn(turn_id=turn_id or _new_turn_id(), text=text, media=media_to_proto(media))
        if seed is not None:
            message.seed = seed
        if max_reply_tokens is not None:
            message.max_reply_tokens = max_reply_tokens
        turn = self._router.claim(message.turn_id)
        await self._send(pb.ClientEvent(turn=message), turn=turn)
        return turn

    async def append_audio(self, data: bytes) -> bool:
        """Input audio in the format declared at open; False if dropped because the stream was down."""
        if self.audio is None:
            raise ValueError("declare the input audio format (audio=AudioFormat(...)) to append audio")
        event = pb.ClientEvent(audio=pb.AudioAppend(data=data))
        return await self._send(event, droppable=True, audio_ms=self.audio.duration_ms(len(data)))

    async def commit_audio(self, *, turn_id: str | None = None, media: Iterable[Media] = ()) -> Turn:
        """Push-to-talk: the audio since the last commit is the user's turn. Audio without speech makes no
        turn (the handle then only ends by its timeout); a commit while the stream is down is dropped and
        its turn interrupted, as the audio before it went with the old stream."""
        commit = pb.AudioCommit(turn_id=turn_id or _new_turn_id(), media=media_to_proto(media))
        turn = self._router.claim(commit.turn_id, commit=True)
        await self._send(pb.ClientEvent(audio_commit=commit), droppable=True, turn=turn)
        return turn

    async def next_turn(self, timeout: float | None = None) -> Turn:
        """The handle of the next turn the server starts by itself (server VAD found the end of an
        utterance), from its TurnStarted on. A stream-level error while waiting (audio refused) raises
        TurnFailed."""
        return await self._router.next_turn(timeout)

    async def send_camera_frame(self, jpeg: bytes, timestamp_ms: int | None = None) -> bool:
        stamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        return await self._send(pb.ClientEvent(camera_frame=pb.CameraFrame(timestamp_ms=stamp, jpeg=jpeg)), droppable=True)

    async def cancel(self, turn_id: str = "") -> None:
        """Stops the turn (the running one if no id); with the simulated player, its position goes first."""
        if self._playback is not None:
            for running in ([turn_id] if turn_id else list(self._router.turns)):
                played = self._playback.stop(running, time.perf_counter())
                if played is not None:
                    await self.report_playback(running, played)
        await self._send(pb.ClientEvent(cancel=pb.CancelTurn(turn_id=turn_id)), droppable=True)

    async def report_playback(self, turn_id: str, played_ms: int) -> bool:
        """How much of a turn's reply audio the client has played (every ~200 ms while playing, and at
        once when it stops at a flush or cancel)."""
        event = pb.ClientEvent(playback=pb.PlaybackPosition(turn_id=turn_id, played_ms=int(played_ms)))
        return await self._send(event, droppable=True)

    async def send_event(self, event: pb.ClientEvent) -> bool:
        """Low level: any client event, as is (no turn tracking)."""
        return await self._send(event, droppable=event.WhichOneof("event") != "turn")

    async def _send(self, event: pb.ClientEvent, *, droppable: bool = False, turn: Turn | None = None,
                    audio_ms: float = 0.0) -> bool:
        if self._ended.is_set() or self._closing:
            raise ConversationClosed(None, "the conversation is closed")
        if not self._tasks:
            raise RuntimeError("the conversation is not open: `async with` it, or `await conv.open()` first")
        item = _Outgoing(event, droppable, turn, audio_ms)
        self._pending.add(item.sent)
        self._outbox.put_nowait(item)
        try:
            return await item.sent
        finally:
            self._pending.discard(item.sent)

    async def _write_loop(self) -> None:
        while True:
            item = await self._outbox.get()
            await self._write(item)

    async def _write(self, item: _Outgoing) -> None:
        while not self._connected.is_set():
            if item.droppable or self._ended.is_set():
                return self._drop(item, "not sent: the stream was down")
            await _first_of(self._connected.wait(), self._ended.wait())
        if item.turn is not None and item.turn.done:
            return _resolve(item.sent, False)  # interrupted by a drop before it left
        if item.turn is not None:
            item.turn._mark_sent(time.perf_counter())
        try:
            await self._call.write(item.event)
        except _WRITE_FAILURES:
            # The link sees the same drop and interrupts the turns that were running.
            self._dropped_audio_ms += item.audio_ms
            return _resolve(item.sent, False)
        _resolve(item.sent, True)

    def _drop(self, item: _Outgoing, reason: str) -> None:
        self._dropped_audio_ms += item.audio_ms
        if item.turn is not None:
            self._router.interrupt(item.turn, reason)
        _resolve(item.sent, False)

    # ----- receiving ------------------------------------------------------------------------------

    async def next_event(self, timeout: float | None = None) -> Event:
        """The next event not claimed by a turn handle; ConversationClosed once StreamEnded was read."""
        if not self._inbox and self._ended.is_set():
            raise ConversationClosed(None, "the conversation is closed")
        await self._inbox.wait(timeout)
        return self._inbox.pop()

    async def events(self) -> AsyncIterator[Event]:
        """Events not claimed by a turn handle (spoken turns the server started, stream-level errors,
        reconnects, ...), ending with StreamEnded."""
        while True:
            try:
                event = await self.next_event()
            except ConversationClosed:
                return
            yield event
            if isinstance(event, StreamEnded):
                return

    def _route(self, event: Event) -> None:
        if self._playback is not None:
            if isinstance(event, AudioChunk):
                self._playback.on_audio(event.turn_id, event.duration_ms, event.received_at)
            elif isinstance(event, PlaybackFlush):
                self._report_stop(event.turn_id, event.received_at)
        self._router.route(event)

    def _on_turn_end(self, turn_id: str) -> None:
        if self._playback is not None:
            self._playback.on_turn_end(turn_id)

    # ----- the link: read, and reconnect after a drop ----------------------------------------------

    async def _connect(self) -> Ready:
        call = self._stub.Converse(metadata=self._metadata)
        start = pb.ConverseStart(session_id=self.session_id, **(self.audio.start_fields() if self.audio else {}))
        try:
            await call.write(pb.ClientEvent(start=start))
            first = await asyncio.wait_for(call.read(), READY_TIMEOUT_S)
        except BaseException:
            call.cancel()
            raise
        if first is grpc.aio.EOF or first.WhichOneof("event") != "ready":
            call.cancel()
            raise _Unavailable("the stream ended before its Ready event")
        self.ready = from_proto(first, time.perf_counter())
        self._call = call
        self._connected.set()
        return self.ready

    async def _link(self) -> None:
        while True:
            try:
                code, details = await self._read_stream(self._call)
            except _LocalCancel:
                return self._end(grpc.StatusCode.CANCELLED, "the call was cancelled by this client")
            dropped_at = time.monotonic()
            self._connected.clear()
            self._router.interrupt_all(f"the stream dropped ({code.name}: {details})")
            if self._policy is None or code not in RETRIABLE:
                return self._end(code, details)
            if not await self._reconnect(code, details, dropped_at):
                return

    async def _read_stream(self, call) -> tuple[grpc.StatusCode, str]:
        """Routes events until the stream ends; returns how it ended."""
        while True:
            try:
                message = await call.read()
            except grpc.aio.AioRpcError as error:
                return error.code(), error.details() or ""
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    raise
                raise _LocalCancel() from None
            if message is grpc.aio.EOF:
                # The server ends a stream only when it stops: the session lives on elsewhere.
                return grpc.StatusCode.UNAVAILABLE, "the server ended the stream"
            self._route(from_proto(message, time.perf_counter()))

    async def _reconnect(self, code: grpc.StatusCode, details: str, dropped_at: float) -> bool:
        attempt = 0
        while time.monotonic() - dropped_at < self._policy.give_up_after_s:
            attempt += 1
            await asyncio.sleep(self._policy.delay(attempt))
            try:
                ready = await self._connect()
            except (grpc.aio.AioRpcError, _Unavailable, asyncio.TimeoutError) as error:
                code, details = _status_of(error)
                if code not in RETRIABLE:
                    self._end(code, details)
                    return False
                continue
            dropped, self._dropped_audio_ms = self._dropped_audio_ms, 0.0
            log.info("session %s: stream reopened after %d attempt(s)", self.session_id, attempt)
            self._inbox.put(Reconnected(attempts=attempt, downtime_s=time.monotonic() - dropped_at,
                                      session=ready.session, dropped_audio_ms=dropped))
            return True
        self._end(code, f"gave up reconnecting after {self._policy.give_up_after_s:.0f} s: {details}")
        return False

    def _end(self, code: grpc.StatusCode | None, details: str) -> None:
        if self._ended.is_set():
            return
        self._connected.clear()
        self._router.end(code, details)
        self._ended.set()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        for sent in list(self._pending):
            _resolve(sent, False)
        self._inbox.put(StreamEnded(code=code, details=details))

    # ----- simulated playback ---------------------------------------------------------------------

    async def _report_playback_loop(self) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            for turn_id, played in self._playback.due(time.perf_counter()):
                self._post_position(turn_id, played)

    def _report_stop(self, turn_id: str, now: float) -> None:
        played = self._playback.stop(turn_id, now)
        if played is not None:
            self._post_position(turn_id, played)

    def _post_position(self, turn_id: str, played_ms: int) -> None:
        """Queued without waiting for the write (the caller is the reader or a timer)."""
        event = pb.ClientEvent(playback=pb.PlaybackPosition(turn_id=turn_id, played_ms=played_ms))
        self._outbox.put_nowait(_Outgoing(event, True, None, 0.0))


class _Unavailable(Exception):
    pass


def _status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code(), error.details() or ""
    return grpc.StatusCode.UNAVAILABLE, str(error) or "no Ready from the server in time"


def _resolve(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


async def _first_of(*waits) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _new_turn_id() -> str:
    return uuid.uuid4().hex
