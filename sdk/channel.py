"""The client channel: message limits and keepalive as the servers set them, and quick reconnects."""

from __future__ import annotations

from pathlib import Path

import grpc

from shared.grpc_server import channel_options
from shared.keepalive import DEFAULT as DEFAULT_KEEPALIVE
from shared.keepalive import Keepalive
from shared.tls import credentials_from_files

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def open_channel(address: str, credentials: grpc.ChannelCredentials | None = None,
                 keepalive: Keepalive = DEFAULT_KEEPALIVE) -> grpc.aio.Channel:
    options = [
        # Keepalive pings keep idle voice streams open through proxies. `keepalive` must match the
        # servers' (VITA_KEEPALIVE_TIME_MS): pings faster than they accept end every stream with GOAWAY.
        *channel_options(MAX_MESSAGE_BYTES, keepalive),
        # gRPC's default reconnect backoff grows to two minutes; a restarted orchestrator is back in seconds.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=options)
    return grpc.aio.insecure_channel(address, options=options)


def tls_credentials(ca: str | Path | None = None, cert: str | Path | None = None,
                    key: str | Path | None = None) -> grpc.ChannelCredentials:
    """TLS to the orchestrator: `ca` (PEM) verifies its certificate (None = the system's roots); `cert` and
    `key` are a client certificate, for a server that requires one. Pass it as `AsyncClient(credentials=...)`."""
    return credentials_from_files(Path(ca) if ca else None, Path(cert) if cert else None, Path(key) if key else None)


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()
