"""Engine futures seen from the event loop."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


def awaitable(future: Future[T]) -> asyncio.Future[T]:
    """An asyncio view of an engine future. Unlike `asyncio.wrap_future`, cancelling the view (a client
    cancel) leaves the engine's future alone: the engine still resolves it, and nobody listens."""
    loop = asyncio.get_running_loop()
    view: asyncio.Future[T] = loop.create_future()

    def copy_state(done: Future[T]) -> None:
        if view.done():
            return
        if done.cancelled():
            view.cancel()
            return
        error = done.exception()
        if error is not None:
            view.set_exception(error)
        else:
            view.set_result(done.result())

    def resolved(done: Future[T]) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(copy_state, done)

    future.add_done_callback(resolved)
    return view
