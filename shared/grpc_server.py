"""Runs one service as a `grpc.aio` server: health checking, reflection, /metrics, message limits,
an announced address, and a graceful drain on SIGTERM.

A service supplies a `ServiceApp`: it registers its servicers, loads its models (health says NOT_SERVING
until then, so orchestrators and Kubernetes probes wait), and stops its engine after the drain.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from shared import json_logs, tls, tracing
from shared.checkpoint import CheckpointError
from shared.keepalive import DEFAULT as DEFAULT_KEEPALIVE
from shared.keepalive import Keepalive
from shared.log_fields import CallFieldsInterceptor
from shared.metrics import RpcMetrics
from shared.rpc_handlers import final_code, is_infrastructure, wrap_around
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)

READY_PREFIX = "VITA_READY "
# Clients re-resolve DNS only when a connection closes, so replicas added by scale-out (a headless
# Service's new pods) get no calls from clients already connected. Closing each connection after this age
# (GOAWAY; gRPC adds ±10% jitter) makes them re-resolve. Calls in flight are not cut: the grace period is
# left unbounded, so a long Converse stream finishes on its old connection.
MAX_CONNECTION_AGE_MS = 5 * 60 * 1000


class ServiceApp(Protocol):
    """An app may also define `async def drain(self, timeout_s: float) -> None`: called on SIGTERM after
    health turned NOT_SERVING and before the server stops, it refuses new work, lets the work in progress
    finish within `timeout_s`, and stops (and cleans up after) what is still running then."""

    name: str
    metrics: RpcMetrics

    def register(self, server: grpc.aio.Server) -> list[str]:
        """Adds the servicers; returns their full service names (for health and reflection)."""

    async def load(self) -> None:
        """Loads models and starts engines (off the event loop where it is slow)."""

    async def close(self) -> None:
        """Stops engines after in-flight calls drained."""


class EngineApp:
    """A model service: its servicer is registered before the models load (health says NOT_SERVING and
    early calls get UNAVAILABLE), `start()` builds the engine off the event loop and attaches it, and
    `close()` stops the thread pools and the engine after the drain. Subclasses set `name`, `metrics`,
    `service` (the protobuf service descriptor) and `add_servicer`, and implement `start()`."""

    name: str
    metrics: RpcMetrics
    service = None  # google.protobuf ServiceDescriptor
    add_servicer = None  # the generated add_<Service>Servicer_to_server

    def __init__(self, common: ServiceSettings, settings, servicer):
        self.common = common
        self.settings = settings
        self.servicer = servicer
        self.engine = None
        self._pools: list[ThreadPoolExecutor] = []

    def register(self, server: grpc.aio.Server) -> list[str]:
        type(self).add_servicer(self.servicer, server)
        return [self.service.full_name]

    def pool(self, workers: int, prefix: str) -> ThreadPoolExecutor:
        """A thread pool for blocking per-request work (decoding, features), shut down at close."""
        executor = ThreadPoolExecutor(workers, thread_name_prefix=prefix)
        self._pools.append(executor)
        return executor

    def start(self) -> None:
        """Builds, starts and attaches the engine (runs in a worker thread)."""
        raise NotImplementedError

    async def load(self) -> None:
        await asyncio.to_thread(self.start)

    async def close(self) -> None:
        for executor in self._pools:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        if self.engine is not None:
            await asyncio.to_thread(self.engine.stop)


class LoadingGate:
    """Mixin for servicers registered before their models load: calls that arrive early get
    UNAVAILABLE (retryable) instead of waiting on a half-built engine."""

    _loaded = False
    _stopping = False

    def open(self) -> None:
        self._loaded = True

    def stop_accepting(self) -> None:
        """Shutting down: new calls get UNAVAILABLE, so clients retry on another replica or reconnect."""
        self._stopping = True

    async def require_loaded(self, context) -> None:
        if self._stopping:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the service is shutting down; retry on another replica")
        if not self._loaded:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the service is still loading its models")


def channel_options(max_message_bytes: int, keepalive: Keepalive = DEFAULT_KEEPALIVE) -> list[tuple[str, int]]:
    """A client channel's options: message limits, and keepalive as the servers expect it (shared.keepalive)."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        *keepalive.client_options(),
    ]


def server_options(max_message_bytes: int, keepalive: Keepalive) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        *keepalive.server_options(),
        ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
        # gRPC turns SO_REUSEPORT on by default: a second server on a busy port then binds without an
        # error and the kernel splits the calls between two stacks. A port in use must fail the start.
        ("grpc.so_reuseport", 0),
    ]


class PortInUse(RuntimeError):
    pass


def bind(server: grpc.aio.Server, address: str, settings: ServiceSettings) -> int:
    """Binds `address` (TLS when settings name a certificate); returns the port. A port that cannot be
    bound (in use, or not this host's address) fails the start with one clear line."""
    try:
        port = tls.add_port(server, address, settings)
    except RuntimeError:  # grpc raises on a failed bind since 1.x; older versions returned 0
        port = 0
    if port == 0:
        raise PortInUse(
            f"cannot listen on {address}: the port is in use (or the address is not this host's); "
            "stop what holds it or choose another port"
        )
    return port


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every RPC by method and final status, and times it, for all four call shapes."""

    def __init__(self, metrics: RpcMetrics):
        self._metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if is_infrastructure(handler_call_details.method):
            return handler  # probes and reflection are not the service's work (shared.rpc_handlers)
        method = handler_call_details.method.rsplit("/", 1)[-1]
        metrics = self._metrics

        def enter(context) -> float:
            metrics.active.labels(method).inc()
            return time.perf_counter()

        def leave(context, started: float, error: BaseException | None) -> None:
            metrics.calls.labels(method, final_code(context, error).name).inc()
            metrics.duration.labels(method).observe(time.perf_counter() - started)
            metrics.active.labels(method).dec()

        return wrap_around(handler, enter, leave)


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """When started by the local launcher: get SIGTERM if the launcher dies, even by SIGKILL."""
    if parent_pid <= 0:
        return
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the launcher died before the line above took effect
        raise SystemExit("the launcher that started this service is gone")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


async def serve(app: ServiceApp, settings: ServiceSettings, extra_interceptors: list | None = None) -> None:
    """Serves until SIGTERM/SIGINT, then drains for `settings.drain_seconds`."""
    json_logs.use_format(settings.log_format, app.name)
    die_with_parent(settings.parent_pid)
    # Only the model services hold torch (their modules import it before this runs). The launcher gives
    # every process the same thread count, and importing torch here would cost the orchestrator ~4 s.
    torch = sys.modules.get("torch")
    if settings.torch_threads > 0 and torch is not None:
        torch.set_num_threads(settings.torch_threads)
    metrics_port = -1
    if settings.metrics_port >= 0:
        metrics_server, _ = start_http_server(settings.metrics_port, addr=settings.host)
        metrics_port = metrics_server.server_port

    # Tracing (VITA_OTLP_ENDPOINT; off by default): a span per RPC, parented by the caller's context.
    tracer_provider = tracing.setup(app.name, settings)
    server = grpc.aio.server(
        options=server_options(settings.max_message_bytes, Keepalive.from_settings(settings)),
        interceptors=[
            *tracing.server_interceptors(), MetricsInterceptor(app.metrics), CallFieldsInterceptor(),
            *(extra_interceptors or []),
        ],
    )
    service_names = app.register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    try:
        port = bind(server, f"{settings.host}:{settings.port}", settings)
    except PortInUse as error:
        log.error("%s cannot start: %s", app.name, error)
        raise SystemExit(2) from None

    async def set_status(status) -> None:
        await health_servicer.set("", status)
        for name in service_names:
            await health_servicer.set(name, status)

    await set_status(health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    started = time.perf_counter()
    loading = asyncio.ensure_future(app.load())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait((loading, stopping), return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not loading.done():
        # Stopped while loading (an orchestrator still waiting for its LLM): nothing to drain.
        log.info("%s stopped before it finished loading", app.name)
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        await server.stop(0)
        await app.close()
        return
    try:
        loading.result()
    except CheckpointError as error:
        # A bad checkpoint is an operator's mistake, not a crash: one clear line naming file and key.
        log.error("%s cannot start: %s", app.name, error)
        await server.stop(0)
        raise SystemExit(2) from None
    app.metrics.model_load.set(time.perf_counter() - started)
    await set_status(health_pb2.HealthCheckResponse.SERVING)
    app.metrics.ready.set(1)
    announcement = {"service": app.name, "address": f"{settings.host}:{port}", "metrics_port": metrics_port}
    print(READY_PREFIX + json.dumps(announcement), flush=True)
    log.info("%s serving on %s:%d (metrics on %d)", app.name, settings.host, port, metrics_port)

    await stop.wait()
    log.info("%s draining for up to %.1f s", app.name, settings.drain_seconds)
    app.metrics.ready.set(0)
    await set_status(health_pb2.HealthCheckResponse.NOT_SERVING)
    await drain(app, server, settings.drain_seconds)
    await app.close()
    if tracer_provider is not None:
        tracer_provider.shutdown()  # after the drain: the spans of the turns that just ended are flushed
    log.info("%s stopped", app.name)


# After an app drained its own work, what is left on the server is idle streams (a Converse stream
# between turns, a health Watch) and quick unary calls: they get this long before being cancelled.
IDLE_STREAM_GRACE_S = 1.0


async def drain(app: ServiceApp, server: grpc.aio.Server, drain_seconds: float) -> None:
    """Stops in order: the app refuses new work and finishes what is running (turns, with their history
    written), then the server stops, cancelling what still runs once the drain time is spent."""
    started = time.monotonic()
    app_drain = getattr(app, "drain", None)
    if app_drain is None:
        await server.stop(drain_seconds)
        return
    await app_drain(drain_seconds)
    left = max(0.0, drain_seconds - (time.monotonic() - started))
    await server.stop(min(left, IDLE_STREAM_GRACE_S))
