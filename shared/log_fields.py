"""Which session and turn the running code works for, for log lines (shared/json_logs.py adds them).

Held in context variables, so an asyncio task started inside `bound(...)` carries them, and concurrent
turns never see each other's. The orchestrator binds each turn; a model service binds each call from its
request's CallContext (`CallFieldsInterceptor`)."""

from __future__ import annotations

import contextvars
import inspect
from typing import Awaitable, TypeVar

import grpc

from shared.rpc_handlers import is_infrastructure

T = TypeVar("T")

SESSION_ID: contextvars.ContextVar[str] = contextvars.ContextVar("vita_session_id", default="")
TURN_ID: contextvars.ContextVar[str] = contextvars.ContextVar("vita_turn_id", default="")


def current() -> dict[str, str]:
    """The fields bound where this runs; empty ones are left out."""
    fields = {"session_id": SESSION_ID.get(), "turn_id": TURN_ID.get()}
    return {name: value for name, value in fields.items() if value}


async def bound(work: Awaitable[T], *, session_id: str = "", turn_id: str = "") -> T:
    """Runs `work` (a coroutine) with the fields set, for it and every task it starts."""
    session_token = SESSION_ID.set(session_id)
    turn_token = TURN_ID.set(turn_id)
    try:
        return await work
    finally:
        TURN_ID.reset(turn_token)
        SESSION_ID.reset(session_token)


class CallFieldsInterceptor(grpc.aio.ServerInterceptor):
    """Binds the session and turn of each call whose request carries a CallContext (`ctx`), for the
    call's handler. Calls that stream their requests are left unbound: their ids arrive later."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or is_infrastructure(handler_call_details.method):
            return handler
        common = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary), **common)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(_unary_stream(handler.unary_stream), **common)
        return handler


def _ids(request) -> tuple[str, str]:
    ctx = getattr(request, "ctx", None)
    return (getattr(ctx, "session_id", ""), getattr(ctx, "turn_id", "")) if ctx is not None else ("", "")


def _unary(behaviour):
    async def wrapped(request, context):
        session_id, turn_id = _ids(request)
        return await bound(behaviour(request, context), session_id=session_id, turn_id=turn_id)

    return wrapped


def _unary_stream(behaviour):
    if not inspect.isasyncgenfunction(behaviour):
        return _unary(behaviour)

    async def wrapped(request, context):
        # Each step of the generator runs in the call's own task: set once, for the whole stream.
        session_id, turn_id = _ids(request)
        SESSION_ID.set(session_id)
        TURN_ID.set(turn_id)
        async for response in behaviour(request, context):
            yield response

    return wrapped
