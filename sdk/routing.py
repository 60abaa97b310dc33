"""Which turn a server event belongs to: the handles the caller holds (turns it sent, commits), turns the
server started by itself (server VAD), and callers waiting for the next such turn. Events that no handle
claims go on to the conversation's `events()`."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import grpc

from sdk.errors import ConversationClosed, TurnFailed
from sdk.events import Event, TurnError, TurnInterrupted, TurnStarted
from sdk.turn import Turn, TurnResult


class TurnRouter:
    def __init__(self, deliver: Callable[[Event], None], cancel: Callable[[str], Awaitable[None]],
                 on_turn_end: Callable[[str], None]):
        self._deliver = deliver
        self._cancel = cancel
        self._on_turn_end = on_turn_end
        self.turns: dict[str, Turn] = {}  # running, by turn id
        self._commits: list[Turn] = []  # commit handles whose turn has not started yet
        self._waiters: list[asyncio.Future] = []  # next_turn() callers

    def claim(self, turn_id: str, *, commit: bool = False) -> Turn:
        turn = self.turns[turn_id] = Turn(turn_id, self._cancel, claimed=True)
        if commit:
            self._commits.append(turn)
        return turn

    async def next_turn(self, timeout: float | None) -> Turn:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(waiter, timeout)
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def route(self, event: Event) -> None:
        turn = self.turns.get(event.turn_id) if event.turn_id else None
        if turn is None and isinstance(event, TurnStarted):
            turn = self._server_started(event)
        if turn is None:
            if isinstance(event, TurnError) and not event.turn_id:
                self._fail_waiters(event)
            return self._deliver(event)
        turn._add(event)
        if turn.done:
            self._forget(turn.turn_id)
        if not turn.claimed:
            self._deliver(event)

    def interrupt(self, turn: Turn, reason: str) -> None:
        partial = turn.partial
        event = TurnInterrupted(turn_id=turn.turn_id, reason=reason, received_text=partial.text,
                                received_audio_ms=partial.audio_ms)
        turn._add(event)
        if not turn.claimed:
            self._deliver(event)
        self._forget(turn.turn_id)

    def interrupt_all(self, reason: str) -> None:
        for turn in list(self.turns.values()):
            self.interrupt(turn, reason)

    def end(self, code: grpc.StatusCode | None, details: str) -> None:
        """The conversation is over: running turns are interrupted and next_turn() callers fail."""
        self.interrupt_all(details)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ConversationClosed(code, details))

    def _server_started(self, event: TurnStarted) -> Turn:
        """A waiting commit handle takes a spoken turn (server VAD may end the utterance before the commit
        does: the handle then follows that turn, under the server's id), else a next_turn() caller;
        otherwise the turn is tracked, so that a drop can report it, and its events go to events()."""
        pending = [c for c in self._commits if not c.done and not c.partial.events]
        if event.input == "audio" and pending:
            turn = pending[0]
            self._commits.remove(turn)
            self.turns.pop(turn.turn_id, None)
            turn.turn_id = turn.partial.turn_id = event.turn_id
        else:
            turn = Turn(event.turn_id, self._cancel, claimed=bool(self._waiters))
            if self._waiters:
                self._waiters.pop(0).set_result(turn)
        self.turns[event.turn_id] = turn
        return turn

    def _fail_waiters(self, error: TurnError) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(TurnFailed(error.code, error.message, TurnResult("", [error]), error.retry_after_ms))
        self._waiters.clear()

    def _forget(self, turn_id: str) -> None:
        self.turns.pop(turn_id, None)
        self._commits = [c for c in self._commits if c.turn_id != turn_id]
        self._on_turn_end(turn_id)
