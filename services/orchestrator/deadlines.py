"""Deadlines of the calls to the model services.

Unary calls and media encodings get a total deadline (gRPC's own `timeout`). Streams do not: a reply may
be long, and an audio stream lasts as long as the conversation. A stream instead owes answers: the LLM
owes tokens from the moment it is asked, the speech service owes audio while it holds segments it has not
finished, the audio service owes the answer to a commit. While an answer is owed, the first one must come
within `first_s` and each later one within `idle_s` of the previous; a stream that owes nothing may be
silent for ever. A write that the service does not take within `idle_s` (flow control against a stalled
process) fails the same way.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, TypeVar

from services.orchestrator.backends import BackendError

T = TypeVar("T")


@dataclass(frozen=True)
class CallDeadlines:
    connect_s: float = 3.0
    call_s: float = 10.0
    encode_s: float = 60.0
    first_s: float = 30.0
    idle_s: float = 10.0

    @classmethod
    def from_settings(cls, settings) -> "CallDeadlines":
        return cls(
            connect_s=settings.connect_timeout_s,
            call_s=settings.call_timeout_s,
            encode_s=settings.encode_timeout_s,
            first_s=settings.first_response_timeout_s,
            idle_s=settings.stream_idle_timeout_s,
        )


def _seconds(value: float) -> str:
    return f"{value:g} s"


def deadline_error(service: str, what: str, seconds: float) -> BackendError:
    """What the client hears: the service, the stage that stalled, the limit; never internal details."""
    return BackendError("DEADLINE_EXCEEDED", f"the {service} service {what} within {_seconds(seconds)}; try again shortly")


class StreamWatch:
    """When a stream owes an answer, and whether the owed answer is late."""

    def __init__(self, service: str, deadlines: CallDeadlines, *, owed: bool = False,
                 first_what: str = "sent no first answer", idle_what: str = "stalled: no answer"):
        self.service = service
        self._first_s = deadlines.first_s
        self._idle_s = deadlines.idle_s
        self._first_what = first_what
        self._idle_what = idle_what
        self._owed_since: float | None = None
        self._answered = False  # an answer came since the debt began
        self._failure: BackendError | None = None
        # What a waiting read awaits (see `read`); None when no read waits.
        self._waiter: asyncio.Future | None = None
        if owed:
            self.owe()

    def owe(self) -> None:
        """An answer is owed from now on (unless one already was)."""
        if self._owed_since is None:
            self._owed_since = time.monotonic()
            self._answered = False
            self._wake()

    def restart(self) -> None:
        """The call was reopened elsewhere: what is owed is owed afresh, from now."""
        if self._owed_since is not None:
            self._owed_since = time.monotonic()
            self._answered = False
            self._wake()

    def answered(self, still_owed: bool) -> None:
        if still_owed:
            self._owed_since = time.monotonic()
            self._answered = True
        else:
            self._owed_since = None

    def _limit(self) -> tuple[float, str]:
        return (self._idle_s, self._idle_what) if self._answered else (self._first_s, self._first_what)

    def time_left(self) -> float | None:
        """Seconds until the owed answer is late; None when nothing is owed."""
        if self._owed_since is None:
            return None
        return self._owed_since + self._limit()[0] - time.monotonic()

    def late(self) -> BackendError:
        seconds, what = self._limit()
        return deadline_error(self.service, what, seconds)

    def fail(self, error: BackendError) -> None:
        """The stream failed on its write side (a write the service did not take): the reader raises it."""
        self._failure = error
        self._wake()

    def _wake(self, _done: object = None) -> None:
        """The debt or the failure changed: a waiting read looks again at its limit."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self, call) -> object:
        """The call's next message (or grpc.aio.EOF); the deadline error when an owed one is late, or the
        write side's failure.

        The read runs as its own task (cancelling a gRPC read cancels the call) and this waits on one
        future that the read's end, the limit's timer, `owe`, `restart` and `fail` resolve. This runs for
        every token and audio chunk: a second task plus `asyncio.wait` per message, as it was first
        written, cost the orchestrator several percent of its CPU (docs/CAPACITY.md)."""
        read = asyncio.ensure_future(call.read())
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self._failure is not None:
                    raise self._failure
                if read.done():
                    return read.result()
                left = self.time_left()
                if left is not None and left <= 0:
                    raise self.late()
                waiter = self._waiter = loop.create_future()
                wake = self._wake
                read.add_done_callback(wake)
                timer = loop.call_later(left, wake) if left is not None else None
                try:
                    await waiter
                finally:
                    self._waiter = None
                    read.remove_done_callback(wake)
                    if timer is not None:
                        timer.cancel()
        finally:
            if not read.done():
                read.cancel()
            elif not read.cancelled():
                # A read that failed just as this one gave up (deadline, write failure): its error is the
                # same ended call, already reported; mark it seen so asyncio does not log it as lost.
                read.exception()


async def within(step: Awaitable[T], seconds: float, error: BackendError) -> T:
    """`step`, or `error` when it takes longer than `seconds` (the step is cancelled)."""
    try:
        return await asyncio.wait_for(step, seconds)
    except asyncio.TimeoutError:
        raise error from None
