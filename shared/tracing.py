"""OpenTelemetry traces: one trace per turn, across the orchestrator and every model service.

The W3C `traceparent` travels in gRPC metadata: `ClientInterceptors` (on the orchestrator's channels)
opens a CLIENT span per call and injects its context; `ServerInterceptor` (on every service) extracts it
and opens a SERVER span per RPC, current while the handler runs. A turn is a root span of its own
(`turn_span`), linked to the Converse stream it arrived on: a voice session lasts minutes, a trace should
not.

Off by default. `setup()` turns it on when `VITA_OTLP_ENDPOINT` is set (spans are batched and exported
over OTLP/gRPC); without it no interceptor is installed and `tracer()` hands out no-op spans.

Why not opentelemetry-instrumentation-grpc: its grpc.aio interceptors have open bugs on stream-stream
calls (our speech path is one), and it is one more beta dependency; what we need is ~150 lines.
"""

from __future__ import annotations

import logging
from typing import Awaitable, TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from shared.rpc_handlers import final_code, is_infrastructure, wrap_around

log = logging.getLogger(__name__)

TRACER_NAME = "vita-serve"
# Codes that are the caller's doing (or a normal stop), not a failure of the service.
_NOT_ERRORS = {grpc.StatusCode.OK, grpc.StatusCode.CANCELLED}

_provider: TracerProvider | None = None

T = TypeVar("T")


def setup(service_name: str, settings, exporter: SpanExporter | None = None) -> TracerProvider | None:
    """Turns tracing on for this process when `settings.otlp_endpoint` is set (or an exporter is given,
    e.g. in tests); returns the provider (call `shutdown()` on it at exit to flush), or None when off."""
    endpoint = getattr(settings, "otlp_endpoint", None)
    if exporter is None and not endpoint:
        return None
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"vita-{service_name}", "service.namespace": "vita"})
    )
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        # http:// = plaintext (a collector sidecar or in-cluster service), https:// = TLS.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        log.info("tracing on: spans go to %s", endpoint)
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    install(provider)
    # Process-wide too, for any library that traces through the global API (set once per process).
    trace.set_tracer_provider(provider)
    return provider


def install(provider: TracerProvider) -> None:
    """Makes `provider` the one this module's tracer, interceptors and channels use (tests use this to
    share one in-memory provider between in-process servers without touching the global one)."""
    global _provider
    _provider = provider


def uninstall() -> None:
    global _provider
    _provider = None


def enabled() -> bool:
    return _provider is not None


def tracer() -> trace.Tracer:
    if _provider is None:
        return trace.get_tracer(TRACER_NAME)  # no-op unless a global provider was set
    return _provider.get_tracer(TRACER_NAME)


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """What `shared.grpc_server.serve` adds to its server: nothing when tracing is off."""
    return [ServerInterceptor()] if enabled() else []


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """What `shared.channels.open_channel` adds to a channel: nothing when tracing is off (aio client
    interceptors cost an extra hop per streamed message)."""
    return [
        UnaryUnaryTracing(), UnaryStreamTracing(), StreamUnaryTracing(), StreamStreamTracing()
    ] if enabled() else []


# ------------------------------------------------------------------------------------------- turns


async def turn_span(work: Awaitable[T], *, session_id: str, turn_id: str, input_kind: str) -> T:
    """Runs one turn (`work`, a coroutine) inside a new root span "turn", linked to the span current
    where it is called (the Converse stream). Every model call the turn makes, including those from
    tasks it starts, becomes part of this trace."""
    stream = trace.get_current_span().get_span_context()
    links = [Link(stream)] if stream.is_valid else []
    with tracer().start_as_current_span(
        "turn",
        context=otel_context.Context(),  # a root: one trace per turn
        kind=SpanKind.INTERNAL,
        links=links,
        attributes={"vita.session_id": session_id, "vita.turn_id": turn_id, "vita.input": input_kind},
    ):
        return await work


def turn_outcome(outcome: str) -> None:
    """Records how the current turn ended on its span ("completed", "cancelled", "failed", ...)."""
    span = trace.get_current_span()
    span.set_attribute("vita.turn.outcome", outcome)
    if outcome == "failed":
        span.set_status(Status(StatusCode.ERROR, "turn failed"))


# ------------------------------------------------------------------------------------------ server


def _rpc_attributes(method: str) -> dict[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """A SERVER span per RPC, child of the caller's span when the metadata carries one, current while the
    handler runs; ends with the RPC's final status code (for all four call shapes)."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        # Probes and reflection would put a trace per kubelet probe next to the turns.
        if handler is None or is_infrastructure(method):
            return handler
        carrier = {key: value for key, value in (handler_call_details.invocation_metadata or ())
                   if isinstance(value, str)}
        parent = propagate.extract(carrier)
        attributes = _rpc_attributes(method)
        name = method.lstrip("/")

        def enter(context):
            span = tracer().start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
            return span, otel_context.attach(trace.set_span_in_context(span, parent))

        def leave(context, state, error: BaseException | None) -> None:
            span, token = state
            code = final_code(context, error)
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code not in _NOT_ERRORS:
                span.set_status(Status(StatusCode.ERROR, code.name))
                if error is not None and code == grpc.StatusCode.INTERNAL:
                    span.record_exception(error)
            span.end()
            otel_context.detach(token)

        return wrap_around(handler, enter, leave)


# ------------------------------------------------------------------------------------------ client


def _done_code(call) -> grpc.StatusCode | None:
    """The status of a FINISHED aio call, read without awaiting: `code()` is a coroutine, but on a done
    call it completes on its first step. None if it would have to wait."""
    if call.cancelled():
        return grpc.StatusCode.CANCELLED
    step = call.code()
    try:
        step.send(None)
    except StopIteration as finished:
        return finished.value
    except Exception:  # noqa: BLE001 - a status we cannot read must not break the call's callbacks
        return None
    step.close()
    return None


def _end_client_span(span: trace.Span, call) -> None:
    code = _done_code(call)
    if code is not None:
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code not in _NOT_ERRORS:
            span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


class _ClientTracing:
    """Opens a CLIENT span per call (ended when the call finishes) and puts its context in the call's
    metadata. The interceptor runs in a task created where the call is made, so the caller's current
    span (the turn) is the parent."""

    def _start(self, details: grpc.aio.ClientCallDetails):
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        if is_infrastructure(method):
            return None, details
        span = tracer().start_span(method.lstrip("/"), kind=SpanKind.CLIENT, attributes=_rpc_attributes(method))
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        metadata = grpc.aio.Metadata(*tuple(details.metadata or ()))
        for key, value in carrier.items():
            metadata.add(key, value)
        return span, details._replace(metadata=metadata)

    async def _call(self, continuation, details, request):
        span, details = self._start(details)
        if span is None:
            return await continuation(details, request)
        try:
            call = await continuation(details, request)
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            span.end()
            raise
        call.add_done_callback(lambda done: _end_client_span(span, done))
        return call


class UnaryUnaryTracing(_ClientTracing, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await self._call(continuation, client_call_details, request)


class UnaryStreamTracing(_ClientTracing, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await self._call(continuation, client_call_details, request)


class StreamUnaryTracing(_ClientTracing, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await self._call(continuation, client_call_details, request_iterator)


class StreamStreamTracing(_ClientTracing, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await self._call(continuation, client_call_details, request_iterator)
