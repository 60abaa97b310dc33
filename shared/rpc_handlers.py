"""Rebuilds a gRPC method handler around wrapped behaviour (server interceptors: metrics, tracing)."""

from __future__ import annotations

import grpc


def rewrap_handler(handler: grpc.RpcMethodHandler, wrap_unary, wrap_stream) -> grpc.RpcMethodHandler:
    """The same handler, its behaviour passed through `wrap_unary` (a coroutine function returning one
    response) or `wrap_stream` (an async generator), whichever fits each of the four call shapes."""
    common = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap_unary(handler.unary_unary), **common)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap_unary(handler.stream_unary), **common)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap_stream(handler.unary_stream), **common)
    return grpc.stream_stream_rpc_method_handler(wrap_stream(handler.stream_stream), **common)
