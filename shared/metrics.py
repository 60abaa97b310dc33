"""Metric building blocks. Each service declares its own metrics in its `metrics.py`, named
`vita_<service>_<what>_<unit>`, with bounded labels only (method, outcome, stage — never a session id)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

# Voice latencies live between tens of milliseconds and a few seconds; the tail runs on to minutes
# (a long reply's turn, a cold full-preset prefill, a request stuck behind a saturated queue), and a
# histogram must still tell 45 s from 4 min there rather than pile both into +Inf.
LATENCY_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
)
# Model compute per step or call: sub-millisecond decode steps to multi-second encodes.
COMPUTE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


@dataclass(frozen=True)
class RpcMetrics:
    """Per-method RPC counters of one service (used by `shared.grpc_server.MetricsInterceptor`)."""

    calls: Counter
    duration: Histogram
    active: Gauge
    ready: Gauge
    model_load: Gauge

    @classmethod
    def declare(cls, service: str) -> "RpcMetrics":
        return cls(
            calls=Counter(f"vita_{service}_rpcs_total", "Finished RPCs by method and gRPC status code", ["method", "code"]),
            duration=Histogram(
                f"vita_{service}_rpc_duration_seconds", "RPC wall time by method", ["method"], buckets=LATENCY_BUCKETS_S
            ),
            active=Gauge(f"vita_{service}_active_rpcs", "RPCs and streams in progress by method", ["method"]),
            ready=Gauge(f"vita_{service}_ready", "1 when the service reports SERVING"),
            model_load=Gauge(f"vita_{service}_model_load_seconds", "Time taken to load the models at start-up"),
        )
