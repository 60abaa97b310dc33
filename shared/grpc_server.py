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

from shared import tls, tracing
from shared.checkpoint import CheckpointError
from shared.metrics import RpcMetrics
from shared.rpc_handlers import final_code, wrap_around
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)

READY_PREFIX = "VITA_READY "
# Clients re-resolve DNS only when a connection closes, so replicas added by scale-out (a headless
# Service's new pods) get no calls from clients already connected. Closing each connection after this age
# (GOAWAY; gRPC adds ±10% jitter) makes them re-resolve. Calls in flight are not cut: the grace period is
# left unbounded, so a long Converse stream finishes on its old connection.
MAX_CONNECTION_AGE_MS = 5 * 60 * 1000
# Clients ping every 30 s (channel_options) to keep idle streams open; a gRPC server answers pings that
# come more often than every 5 min without data with GOAWAY "too_many_pings", which ends every stream on
# the connection. Accept pings down to this interval.
MIN_CLIENT_PING_INTERVAL_MS = 10_000


class ServiceApp(Protocol):
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

    def open(self) -> None:
        self._loaded = True

    async def require_loaded(self, context) -> None:
        if not self._loaded:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the service is still loading its models")


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Keep idle streams alive through proxies; voice sessions sit idle between turns.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every RPC by method and final status, and times it, for all four call shapes."""

    def __init__(self, metrics: RpcMetrics):
        self._metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
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
        options=[
            *channel_options(settings.max_message_bytes),
            ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
            ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
        ],
        interceptors=[*tracing.server_interceptors(), MetricsInterceptor(app.metrics), *(extra_interceptors or [])],
    )
    service_names = app.register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    port = tls.add_port(server, f"{settings.host}:{settings.port}", settings)  # TLS when settings name a cert
    if port == 0:
        raise RuntimeError(f"could not bind {settings.host}:{settings.port}")

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
    try:
        await app.load()
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
    await server.stop(settings.drain_seconds)
    await app.close()
    if tracer_provider is not None:
        tracer_provider.shutdown()  # flushes the spans still batched
    log.info("%s stopped", app.name)
