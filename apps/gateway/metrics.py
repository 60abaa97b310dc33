"""The gateway's Prometheus metrics (`vita_gateway_*`), served at /metrics. Labels stay bounded: routes,
HTTP status codes, event types from the protocol's closed set (anything else counts as "other")."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import LATENCY_BUCKETS_S


@dataclass(frozen=True)
class GatewayMetrics:
    requests: Counter
    realtime_connections: Gauge
    realtime_events: Counter
    realtime_errors: Counter
    first_audio: Histogram

    @classmethod
    def declare(cls) -> "GatewayMetrics":
        return cls(
            requests=Counter("vita_gateway_http_requests_total", "Finished HTTP requests by route and status",
                             ["route", "status"]),
            realtime_connections=Gauge("vita_gateway_realtime_connections", "Open /v1/realtime WebSockets"),
            realtime_events=Counter("vita_gateway_realtime_client_events_total",
                                    "Realtime client events read, by type", ["type"]),
            realtime_errors=Counter("vita_gateway_realtime_errors_total", "Realtime error events sent, by code",
                                    ["code"]),
            first_audio=Histogram("vita_gateway_first_audio_seconds",
                                  "Response request (or the start of a spoken turn) to its first audio sent",
                                  ["api"], buckets=LATENCY_BUCKETS_S),
        )
