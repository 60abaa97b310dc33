"""HTTP/2 keepalive, matched between every client and every server of the stack.

Voice sessions sit idle for minutes between turns, and so do the orchestrator's long-lived streams to the
audio service. A client pings an idle connection every `time_ms` so that NATs, proxies and load
balancers do not drop it silently, and closes a connection whose ping goes unanswered for `timeout_ms`.
A gRPC server answers pings that come more often than its own minimum (5 min by default) without data in
between with GOAWAY "too_many_pings", which ends every stream on that connection: the servers therefore
accept pings down to a third of the clients' interval. Both ends are built from one `Keepalive`, which
every process reads from the same settings (VITA_KEEPALIVE_TIME_MS, VITA_KEEPALIVE_TIMEOUT_MS).
docs/DEPLOY.md says what proxies and load balancers in between need.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TIME_MS = 30_000
DEFAULT_TIMEOUT_MS = 20_000
# A server accepts pings this many times more often than clients send them: a client's ping timer and
# the server's last-data clock do not tick together, and a reconnecting client pings soon after connecting.
SERVER_PING_SLACK = 3


@dataclass(frozen=True)
class Keepalive:
    time_ms: int = DEFAULT_TIME_MS
    timeout_ms: int = DEFAULT_TIMEOUT_MS

    def __post_init__(self) -> None:
        if self.time_ms < 1 or self.timeout_ms < 1:
            raise ValueError("keepalive times must be positive (ms)")

    @classmethod
    def from_settings(cls, settings) -> "Keepalive":
        return cls(settings.keepalive_time_ms, settings.keepalive_timeout_ms)

    @property
    def min_client_ping_interval_ms(self) -> int:
        """The shortest interval between a client's pings that the servers accept."""
        return max(1, self.time_ms // SERVER_PING_SLACK)

    def client_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.keepalive_time_ms", self.time_ms),
            ("grpc.keepalive_timeout_ms", self.timeout_ms),
            # Idle connections are the ones that need it: a session between two Converse streams.
            ("grpc.keepalive_permit_without_calls", 1),
            # 0 = no cap on pings sent while no data flows (gRPC's default stops after 2).
            ("grpc.http2.max_pings_without_data", 0),
        ]

    def server_options(self) -> list[tuple[str, int]]:
        return [
            # The server pings idle clients too, to find connections whose client vanished.
            ("grpc.keepalive_time_ms", self.time_ms),
            ("grpc.keepalive_timeout_ms", self.timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # What the clients above send must never count as abuse.
            ("grpc.http2.min_ping_interval_without_data_ms", self.min_client_ping_interval_ms),
        ]


DEFAULT = Keepalive()

__all__ = ["DEFAULT", "Keepalive"]
