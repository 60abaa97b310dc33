"""Speech in for one Converse stream: PCM goes to the audio service as it arrives (features are computed
while the user speaks); its VAD events and finished utterances come back to the conversation.

Clients may cut their audio anywhere, even inside a sample: the audio service receives whole samples in
pieces it takes (services/orchestrator/pcm.py). Refused audio (NaN floats, checked here before they are
sent, or anything the audio service refuses) ends that audio stream once, with one error; later audio is
ignored until the client's next commit, instead of opening a new stream, and a new error, for every chunk.

An unreachable audio service (down, restarting) is an outage: it is reported once, the audio that arrives
meanwhile is dropped at once instead of each chunk waiting out a connect deadline, and commits are
answered with the outage's error. While audio keeps coming the stream is reopened in the background,
with backoff; the writes that arrive during a reopen wait for it, in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import grpc

from services.orchestrator.backends import (
    AudioBackend,
    BackendError,
    CallIds,
    VadParameters,
    VoiceEvent,
    VoiceFormat,
    VoiceStream,
)
from services.orchestrator.pcm import PcmFramer, PcmRejected

log = logging.getLogger(__name__)

MIN_SAMPLE_RATE_HZ = 8000
MAX_SAMPLE_RATE_HZ = 192000

# Writing to a call that has already ended raises one of these; the call's status (what the client needs
# to hear) arrives through its read side, so a failed write is not reported on its own.
_WRITE_AFTER_END = (BackendError, asyncio.InvalidStateError, grpc.aio.UsageError)

# Failures that mean "the audio service cannot be reached now", as opposed to a refusal of this audio.
_OUTAGE_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED")
# Reopening during an outage: the first try soon (a restarted service is often back within a second),
# then less and less often, so that a long outage costs the audio service no stream of failed opens.
FIRST_REOPEN_S = 0.25
MAX_REOPEN_S = 5.0
# Writes held while a reopen is under way: 10 s of audio in 40 ms chunks; later audio is dropped.
MAX_QUEUED_WRITES = 250


@dataclass
class _Outage:
    """The audio service could not be reached: `error` was reported once and answers every commit until
    a stream opens again."""

    error: BackendError
    backoff_s: float
    retry_at: float
    reopening: asyncio.Task | None = field(default=None, repr=False)
    # Writes (audio, commits) that arrived while a reopen was under way, sent in order once it opens.
    queued: deque = field(default_factory=deque, repr=False)


@dataclass(frozen=True)
class CommitRefusal:
    """A commit whose answer is this error. `forward`: the audio service gets it all the same (it ends the
    utterance in progress), and its own answer is discarded."""

    code: str
    message: str
    forward: bool = False


class VoiceInput:
    def __init__(
        self,
        audio: AudioBackend,
        ids: CallIds,
        fmt: VoiceFormat,
        vad: VadParameters,
        on_event: Callable[[VoiceEvent], Awaitable[None]],
        on_error: Callable[[BackendError], None],
        commit_waiting: Callable[[], bool],
    ):
        self._audio = audio
        self._ids = ids
        self._format = fmt
        self._framer = PcmFramer(fmt.encoding, fmt.sample_rate_hz)
        self._vad = vad
        self._on_event = on_event
        self._on_error = on_error
        self._commit_waiting = commit_waiting
        self._stream: VoiceStream | None = None
        self._pump: asyncio.Task | None = None
        self._refused: str | None = None  # why audio is ignored until the next commit
        self._outage: _Outage | None = None
        self._closed = False

    async def _ensure_stream(self) -> VoiceStream:
        if self._stream is None:
            self._stream = await self._audio.open_stream(self._ids, self._format, self._vad)
            self._pump = asyncio.create_task(self._pump_events(self._stream))
        return self._stream

    async def append(self, pcm: bytes) -> None:
        if self._refused is not None or not pcm:
            return
        try:
            pieces = self._framer.feed(pcm)
        except PcmRejected as bad:
            self._fail(BackendError("INVALID_ARGUMENT", str(bad)))
            return
        for piece in pieces:
            await self._write(lambda stream: stream.send(piece))

    def refuse_commit(self) -> CommitRefusal | None:
        """What a commit that comes now must be answered with instead of a turn, if anything. Either way
        the audio since the last commit is then done with."""
        if self._refused is not None:
            reason, self._refused = self._refused, None
            return CommitRefusal("FAILED_PRECONDITION", f"nothing to commit: {reason}")
        stray = self._framer.take_stray()
        if stray:
            return CommitRefusal(
                "INVALID_ARGUMENT",
                f"the audio since the last commit ends inside a sample ({stray} stray bytes; "
                f"{self._format.encoding} samples are {self._framer.width} bytes), so it was discarded; send whole samples",
                forward=True,
            )
        return None

    async def commit(self) -> None:
        """Forwards a commit; its answer comes back as an event (utterance or drop), or as the error of a
        failed stream."""
        await self._write(lambda stream: stream.commit())

    async def _write(self, write: Callable[[VoiceStream], Awaitable[None]]) -> None:
        if self._outage is not None:
            self._while_out(self._outage, write)
            return
        try:
            stream = await self._ensure_stream()
        except BackendError as error:
            self._fail(error)
            return
        try:
            await write(stream)
        except _WRITE_AFTER_END:
            pass  # the stream has ended: its pump reports why

    async def _pump_events(self, stream: VoiceStream) -> None:
        try:
            async for event in stream.events():
                await self._on_event(event)
        except BackendError as error:
            if stream is self._stream:
                self._fail(error)
            return
        if stream is self._stream:
            # The audio service ended the stream without an error (it only does so after a half-close,
            # which the orchestrator never sends): the next audio opens a new one.
            self._reset()

    def _while_out(self, outage: _Outage, write: Callable[[VoiceStream], Awaitable[None]]) -> None:
        """A write during an outage. When a reopen is due or under way, the write waits for it (audio and
        commits keep their order); otherwise the audio is dropped (its utterance is lost anyway) and a
        waiting commit gets the outage's error now."""
        if outage.reopening is None and asyncio.get_running_loop().time() >= outage.retry_at:
            outage.reopening = asyncio.create_task(self._reopen(outage))
        if outage.reopening is not None:
            if len(outage.queued) < MAX_QUEUED_WRITES:
                outage.queued.append(write)
            return
        if self._commit_waiting():
            self._on_error(outage.error)

    async def _reopen(self, outage: _Outage) -> None:
        try:
            stream = await self._audio.open_stream(self._ids, self._format, self._vad)
        except BackendError as error:
            if error.code not in _OUTAGE_CODES:
                log.warning("reopening the audio stream failed: %s %s", error.code, error.message)
            outage.backoff_s = min(MAX_REOPEN_S, outage.backoff_s * 2)
            outage.retry_at = asyncio.get_running_loop().time() + outage.backoff_s
            outage.queued.clear()
            outage.reopening = None
            if self._commit_waiting():
                self._on_error(outage.error)
            return
        if self._closed or self._outage is not outage:
            stream.close()
            return
        log.info("the audio service is reachable again: audio input resumes")
        self._stream = stream
        self._pump = asyncio.create_task(self._pump_events(stream))
        # Writes keep arriving while the queued ones are sent: they join the queue until it is empty.
        while outage.queued:
            write = outage.queued.popleft()
            try:
                await write(stream)
            except _WRITE_AFTER_END:
                break  # the new stream ended too: its pump reports why
        if self._outage is outage:
            self._outage = None

    def _fail(self, error: BackendError) -> None:
        """The audio stream ended with an error. Audio the client got wrong makes later audio wait for
        the next commit (unless one is already on its way: the error is its answer); an unreachable
        service starts an outage, reported this once; anything else lets the next audio open a new
        stream. The session is untouched either way."""
        self._reset()
        if error.code in _OUTAGE_CODES:
            now = asyncio.get_running_loop().time()
            error = BackendError(error.code, f"{error.message}; audio is dropped until the audio service is back")
            self._outage = _Outage(error, FIRST_REOPEN_S, now + FIRST_REOPEN_S)
        if error.code == "INVALID_ARGUMENT" and not self._commit_waiting():
            self._refused = f"the audio was refused ({error.message})"
            error = BackendError(error.code, f"{error.message}; audio is ignored until the next audio_commit")
        self._on_error(error)

    def _reset(self) -> None:
        self._framer.clear()
        if self._stream is not None:
            self._stream.close()
        if self._pump is not None and self._pump is not asyncio.current_task():
            self._pump.cancel()
        self._stream, self._pump = None, None

    async def close(self) -> None:
        self._closed = True
        if self._outage is not None and self._outage.reopening is not None:
            self._outage.reopening.cancel()
        pump = self._pump
        self._reset()
        if pump is not None and pump is not asyncio.current_task():
            try:
                await pump
            except asyncio.CancelledError:
                pass
