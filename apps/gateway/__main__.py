"""`python -m apps.gateway` / `vita serve gateway`: the gateway on uvicorn, its own process.

Like the gRPC services it binds VITA_HOST:VITA_PORT (0 = any free port) and announces the bound address on
stdout (`VITA_READY {"service": "gateway", "address": ..., "metrics_port": ...}`; metrics are on the
same port, at /metrics), so the launcher and the tests find it. SIGTERM stops it: uvicorn stops accepting,
lets running requests finish, and closes open WebSockets."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import uvicorn

from apps.gateway.app import create_app
from apps.gateway.auth import ClientPool
from apps.gateway.settings import GatewaySettings
from shared import tls
from shared.grpc_server import READY_PREFIX, configure_logging, die_with_parent
from shared.keepalive import Keepalive
from shared.settings import ServiceSettings

log = logging.getLogger("apps.gateway")


def main(**overrides) -> None:
    orchestrator = overrides.pop("orchestrator", None)
    common = ServiceSettings(**overrides)
    settings = GatewaySettings(**({"orchestrator": orchestrator} if orchestrator else {}))
    configure_logging(common.log_level)
    die_with_parent(common.parent_pid)
    asyncio.run(serve(common, settings))


async def serve(common: ServiceSettings, settings: GatewaySettings) -> None:
    pool = ClientPool(settings.orchestrator, settings.max_clients, tls.channel_credentials(common),
                      Keepalive.from_settings(common))
    app = create_app(settings, pool)
    sock = _bind(common.host, common.port)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level=common.log_level.lower(), access_log=False, lifespan="on",
        # The app refuses messages over max_event_bytes with an error event; the transport's own limit
        # sits above it so that such a message reaches the app instead of cutting the connection.
        ws_max_size=2 * settings.max_event_bytes,
        ws_ping_interval=Keepalive.from_settings(common).time_ms / 1000.0,
        timeout_graceful_shutdown=common.drain_seconds,
        ssl_certfile=str(settings.https_cert) if settings.https_cert else None,
        ssl_keyfile=str(settings.https_key) if settings.https_key else None,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.02)
    if server.started:
        announcement = {"service": "gateway", "address": f"{common.host}:{port}", "metrics_port": port}
        print(READY_PREFIX + json.dumps(announcement), flush=True)
        log.info("gateway serving on %s:%d for the orchestrator at %s", common.host, port, settings.orchestrator)
    await serving


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        log.error("gateway cannot start: cannot listen on %s:%d (%s); stop what holds it or choose another port",
                  host, port, error.strerror)
        raise SystemExit(2) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


if __name__ == "__main__":
    main()
