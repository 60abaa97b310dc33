"""One turn as the conversation sees it: where it stands, how it is stopped, and what the user heard."""

from __future__ import annotations

import asyncio
import enum
import time
from typing import Coroutine

from services.orchestrator.delivery import TurnDelivery
from services.orchestrator.pipeline import ReplyResult
from services.orchestrator.played import heard_chars, keep_deltas
from services.orchestrator.records import TurnOutcome


class TurnState(enum.Enum):
    PENDING = "pending"  # launched; lock, media and prompt not ready yet
    RUNNING = "running"  # the reply is streaming
    CANCELLING = "cancelling"  # a cancel landed; the turn is recording what was heard
    DONE = "done"


class CancelReason(enum.Enum):
    CLIENT = "client"  # the client sent cancel
    BARGE_IN = "barge_in"  # the user spoke over the reply
    DISCONNECT = "disconnect"  # the stream ended while the turn ran
    FAILURE = "failure"  # a model service failed mid-reply


_OUTCOMES = {
    CancelReason.CLIENT: TurnOutcome.CANCELLED,
    CancelReason.DISCONNECT: TurnOutcome.CANCELLED,
    CancelReason.BARGE_IN: TurnOutcome.BARGED_IN,
    CancelReason.FAILURE: TurnOutcome.FAILED,
}


class TurnHandle:
    """Created when a turn is launched and kept by the conversation until the next one.

    A cancel stops whatever the turn is doing: before the reply, the whole turn (nothing is recorded);
    while the reply streams, only the reply, and the turn goes on to record what the user heard. Either
    way the cancel is answered (a flush, then the cancelled completion).

    A turn that is being stopped, or whose final event is queued, no longer holds the stream: the next
    turn may be launched at once, and it starts when this one has ended (`previous`).
    """

    def __init__(self, delivery: TurnDelivery, previous: "TurnHandle | None" = None):
        self.delivery = delivery
        self.previous = previous if previous is not None and previous.active else None
        self.state = TurnState.PENDING
        self.cancel_reason: CancelReason | None = None
        self._settled = False  # its final event (completion or error) is queued
        self._cancelled_ns: int | None = None
        self._played_reported_ms: float | None = None
        self._task: asyncio.Task | None = None
        self._reply: asyncio.Task | None = None

    @property
    def turn_id(self) -> str:
        return self.delivery.turn_id

    @property
    def active(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def busy(self) -> bool:
        """Running and not being stopped: a new turn on the stream must wait for its end or cancel it."""
        return self.active and self.cancel_reason is None and not self._settled

    def settle(self) -> None:
        """Its final event is queued: what is left (releasing the lock) does not hold the next turn back."""
        self._settled = True

    async def wait_previous(self) -> None:
        if self.previous is not None:
            await self.previous.wait()
            self.previous = None  # ended: no chain of past turns is kept alive

    def start(self, run: Coroutine) -> None:
        self._task = asyncio.create_task(run)
        self._task.add_done_callback(lambda _: self._finish())

    def streaming(self, reply: asyncio.Task) -> None:
        """The reply is streaming in `reply`: from now on a cancel stops that task only."""
        self._reply = reply
        if self.cancel_reason is None:
            self.state = TurnState.RUNNING
        else:  # cancelled between two attempts of the reply
            reply.cancel()

    def cancel(self, reason: CancelReason) -> None:
        if not self.active or self.cancel_reason is not None:
            return
        self.cancel_reason = reason
        self._cancelled_ns = time.perf_counter_ns()
        self.state = TurnState.CANCELLING
        self.delivery.dropped = True  # queued text and audio of this turn are not sent
        (self._reply or self._task).cancel()

    def fail(self) -> None:
        self.cancel_reason = self.cancel_reason or CancelReason.FAILURE

    def _finish(self) -> None:
        self.state = TurnState.DONE

    async def wait(self) -> None:
        """Until the turn has ended; a turn that was stopped before its reply ends without error."""
        if self._task is None:
            return
        try:
            await asyncio.shield(self._task)
        except asyncio.CancelledError:
            if not self._task.done():
                raise  # the waiter itself was cancelled

    # ----- what was played -----

    def report_playback(self, played_ms: float) -> None:
        """The client's own count of the reply audio it played; it wins over the server's estimate."""
        self._played_reported_ms = max(0.0, played_ms)

    def played_ms(self) -> float:
        """Reply audio the user heard before the cancel: the client's last report, else the audio sent
        bounded by its real-time duration since the first chunk (a client that plays as it receives).
        Never more than what was sent. A report is taken as it is, not advanced by the time since it
        arrived: it may lag by the client's reporting interval, and keeping a little less than was heard
        is the safer error (the model is never told it said what the user did not hear)."""
        if self._played_reported_ms is not None:
            return min(self._played_reported_ms, self.delivery.audio_ms)
        return self.delivery.played_ms_at(self._cancelled_ns or time.perf_counter_ns())

    def outcome(self, result: ReplyResult) -> TurnOutcome:
        if self.cancel_reason is not None:
            return _OUTCOMES[self.cancel_reason]
        return TurnOutcome.SUPPRESSED if result.suppressed else TurnOutcome.COMPLETED

    def kept_reply(self, result: ReplyResult, speech_output: bool) -> tuple[str, list[int]]:
        """The reply history keeps, as text and token ids: all of a reply that ran to its end; of a
        stopped one, what was heard. A reply that was not spoken was heard as text: all that was sent."""
        if self.cancel_reason is None:
            return result.text, list(result.token_ids)
        delivered = self.delivery.delivered_text()
        if not speech_output or result.suppressed:
            return delivered, self.delivery.token_ids
        return keep_deltas(self.delivery.deltas, heard_chars(delivered, result.spoken, self.played_ms()))
