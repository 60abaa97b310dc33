"""Server interceptors' common mechanics: wrap a gRPC method handler so that code runs when each RPC
starts and ends (all four call shapes, and both ways grpc.aio lets a handler stream its responses), and
read the RPC's final status code."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Callable

import grpc

Enter = Callable[[Any], Any]  # context → state
Leave = Callable[[Any, Any, BaseException | None], None]  # (context, state, error or None)

# Health checks (kubelet and load-balancer probes, Watch streams that last as long as a client) and
# reflection are infrastructure, not the service's work: neither traced nor counted with its RPCs.
INFRASTRUCTURE_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def is_infrastructure(method: str) -> bool:
    return method.startswith(INFRASTRUCTURE_PREFIXES)


def final_code(context, error: BaseException | None) -> grpc.StatusCode:
    """The status an RPC ended with: cancelled, an unhandled exception (INTERNAL), or what the handler set."""
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return grpc.StatusCode.INTERNAL
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK


def wrap_around(handler: grpc.RpcMethodHandler, enter: Enter, leave: Leave) -> grpc.RpcMethodHandler:
    """The same handler with `enter(context)` run as the RPC starts and `leave(context, state, error)` as it
    ends, however it ends. A streaming response generator is driven by the RPC's own task from start to
    finish, so state that is bound to the current context (a tracing span) is released where it was set."""

    def wrap_unary(behaviour):
        async def wrapped(request_or_iterator, context):
            state, error = enter(context), None
            try:
                return await behaviour(request_or_iterator, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                leave(context, state, error)

        return wrapped

    def wrap_stream(behaviour):
        # A streaming handler either yields its responses (an async generator) or writes them with
        # `await context.write()` and returns (a coroutine: grpc's own health Watch does this). The
        # wrapper must keep the handler's shape: iterating a coroutine fails the call with UNKNOWN.
        if not inspect.isasyncgenfunction(behaviour):
            return wrap_unary(behaviour)

        async def wrapped(request_or_iterator, context):
            state, error = enter(context), None
            try:
                async for response in behaviour(request_or_iterator, context):
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                leave(context, state, error)

        return wrapped

    common = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap_unary(handler.unary_unary), **common)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap_unary(handler.stream_unary), **common)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap_stream(handler.unary_stream), **common)
    return grpc.stream_stream_rpc_method_handler(wrap_stream(handler.stream_stream), **common)
