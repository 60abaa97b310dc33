"""Client channels to model services, spread over replicas with client-side round_robin."""

from __future__ import annotations

import grpc

from shared import tracing
from shared.grpc_server import channel_options
from shared.keepalive import DEFAULT as DEFAULT_KEEPALIVE
from shared.keepalive import Keepalive


def grpc_target(address: str) -> str:
    """"h:p" → as is; "h1:p1,h2:p2" → an ipv4 list target; "dns:///name:port" and other URIs → as is.

    A channel given several addresses spreads its calls with round_robin. The orchestrator does better: it
    resolves a dns:/// name itself and opens one channel per replica, to choose the replica of each call
    (services/orchestrator/replicas.py).
    """
    address = address.strip()
    if "," in address:
        return "ipv4:" + ",".join(part.strip() for part in address.split(","))
    return address


def open_channel(
    address: str,
    max_message_bytes: int,
    credentials: grpc.ChannelCredentials | None = None,
    keepalive: Keepalive = DEFAULT_KEEPALIVE,
) -> grpc.aio.Channel:
    """`credentials` (shared.tls.channel_credentials): TLS, or mTLS with a client certificate; None = plaintext.
    `keepalive`: the same as the model services' (Keepalive.from_settings): their long-lived streams
    (the audio service's) sit idle between turns."""
    options = [
        *channel_options(max_message_bytes, keepalive),
        ("grpc.lb_policy_name", "round_robin"),
        # Reconnect quickly to a replica that restarts; the default backoff grows to minutes.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    # Tracing on: each call carries the caller's trace context in its metadata (shared.tracing).
    interceptors = tracing.client_interceptors() or None
    if credentials is not None:
        return grpc.aio.secure_channel(grpc_target(address), credentials, options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(grpc_target(address), options=options, interceptors=interceptors)
