"""One turn as the client sees it: a handle to follow or cancel it, and its result."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable, TypeVar

from sdk.errors import TurnFailed, TurnInterruptedError
from sdk.events import AudioChunk, Event, TextDelta, Timings, TurnCompleted, TurnError, TurnInterrupted

E = TypeVar("E", bound=Event)
FINAL = (TurnCompleted, TurnError, TurnInterrupted)


@dataclass
class TurnResult:
    """Every event of a turn in arrival order, and what they add up to."""

    turn_id: str
    events: list[Event] = field(default_factory=list)
    # perf_counter seconds when the input (text, or the audio commit) was handed to the stream.
    input_sent_at: float | None = None

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.of(TextDelta))

    @property
    def pcm(self) -> bytes:
        """Reply speech, mono PCM16 at `sample_rate_hz`."""
        return b"".join(e.pcm for e in self.of(AudioChunk))

    @property
    def sample_rate_hz(self) -> int:
        chunks = self.of(AudioChunk)
        return chunks[0].sample_rate_hz if chunks else 0

    @property
    def audio_ms(self) -> float:
        return sum(e.duration_ms for e in self.of(AudioChunk))

    @property
    def completed(self) -> TurnCompleted | None:
        return next(iter(self.of(TurnCompleted)), None)

    @property
    def error(self) -> TurnError | None:
        return next(iter(self.of(TurnError)), None)

    @property
    def interrupted(self) -> TurnInterrupted | None:
        return next(iter(self.of(TurnInterrupted)), None)

    @property
    def outcome(self) -> str:
        """The server's outcome; "error" or "interrupted" when the turn ended without one; "" while running."""
        if self.completed is not None:
            return self.completed.outcome
        return "error" if self.error is not None else "interrupted" if self.interrupted is not None else ""

    @property
    def timings(self) -> Timings | None:
        return self.completed.timings if self.completed is not None else None

    @property
    def client_ttft_ms(self) -> float | None:
        """Input sent → first text delta received, as this client saw it."""
        return self._since_input(self.of(TextDelta))

    @property
    def client_ttfa_ms(self) -> float | None:
        return self._since_input(self.of(AudioChunk))

    def _since_input(self, events: list[Event]) -> float | None:
        if not events or self.input_sent_at is None:
            return None
        return (events[0].received_at - self.input_sent_at) * 1000.0


class Turn:
    """A running turn. `await turn.result()` for the outcome, `async for e in turn.events()` to stream it
    (from its first event, however late you start), `await turn.cancel()` to stop it."""

    def __init__(self, turn_id: str, cancel: Callable[[str], Awaitable[None]], *, claimed: bool = True):
        self.turn_id = turn_id
        # A claimed turn's events go to this handle only; a turn the server started also goes to events().
        self.claimed = claimed
        self._cancel = cancel
        self._result = TurnResult(turn_id)
        self._grew = asyncio.Event()
        self._done = asyncio.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def partial(self) -> TurnResult:
        """What has arrived so far (the final result once done)."""
        return self._result

    def _mark_sent(self, at: float) -> None:
        self._result.input_sent_at = at

    def _add(self, event: Event) -> None:
        if self.done:
            return
        self._result.events.append(event)
        if isinstance(event, FINAL):
            self._done.set()
        grew, self._grew = self._grew, asyncio.Event()
        grew.set()

    async def events(self) -> AsyncIterator[Event]:
        index = 0
        while True:
            grew = self._grew
            while index < len(self._result.events):
                yield self._result.events[index]
                index += 1
            if self.done:
                return
            await grew.wait()

    async def result(self, timeout: float | None = None) -> TurnResult:
        """The completed turn; raises TurnFailed, TurnInterruptedError, or TimeoutError (the turn keeps
        running: cancel it if you give up on it)."""
        await asyncio.wait_for(self._done.wait(), timeout)
        result = self._result
        if result.error is not None:
            raise TurnFailed(result.error.code, result.error.message, result, result.error.retry_after_ms)
        if result.interrupted is not None:
            raise TurnInterruptedError(result.interrupted.reason, result)
        return result

    async def cancel(self) -> None:
        """Asks the server to stop the turn; the result then completes with outcome "cancelled"."""
        if not self.done:
            await self._cancel(self.turn_id)
