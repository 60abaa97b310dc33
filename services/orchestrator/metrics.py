"""Metrics of the orchestrator (vita_orchestrator_*): what users feel, and where each turn's time went."""

import asyncio

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import COMPUTE_BUCKETS_S, LATENCY_BUCKETS_S, RpcMetrics

RPC = RpcMetrics.declare("orchestrator")
TTFT_SECONDS = Histogram(
    "vita_orchestrator_ttft_seconds", "End of user input to first text delta sent", ["input"], buckets=LATENCY_BUCKETS_S
)
TTFA_SECONDS = Histogram(
    "vita_orchestrator_ttfa_seconds", "End of user input to first audio byte sent", ["input"], buckets=LATENCY_BUCKETS_S
)
EOS_TO_AUDIO_SECONDS = Histogram(
    "vita_orchestrator_eos_to_audio_seconds", "End of speech (VAD) to first audio byte sent", buckets=LATENCY_BUCKETS_S
)
TURN_SECONDS = Histogram("vita_orchestrator_turn_seconds", "Turn wall time", ["outcome"], buckets=LATENCY_BUCKETS_S)
STAGE_SECONDS = Histogram(
    "vita_orchestrator_stage_seconds",
    "Per-stage time of each turn, from the timings the services return",
    ["stage", "kind"],
    # Media encodes of long videos on a busy vision service reach past half a minute.
    buckets=COMPUTE_BUCKETS_S + (30.0, 60.0, 120.0),
)
TURNS = Counter("vita_orchestrator_turns_total", "Turns by outcome", ["outcome"])
ACTIVE_SESSIONS = Gauge("vita_orchestrator_active_sessions", "Sessions with an open Converse stream")
ACTIVE_TURNS = Gauge("vita_orchestrator_active_turns", "Turns in progress")
UNDERRUN_RISK = Counter(
    "vita_orchestrator_audio_underrun_risk_total",
    "Gaps between audio chunks longer than the audio already delivered ahead (client playback would stall)",
)
AUDIO_GAP_SECONDS = Histogram(
    "vita_orchestrator_audio_gap_seconds", "Time between consecutive audio chunks of a reply", buckets=LATENCY_BUCKETS_S
)
REDIS_SECONDS = Histogram(
    "vita_orchestrator_redis_seconds", "Redis operation latency", ["operation"], buckets=COMPUTE_BUCKETS_S
)
ERRORS = Counter("vita_orchestrator_turn_errors_total", "Turn errors sent to clients by gRPC code", ["code"])
EMBEDDING_CACHE_BYTES = Gauge(
    "vita_orchestrator_embedding_cache_bytes",
    "Bytes of media embeddings held in memory (bounded by VITA_ORCH_EMBEDDING_CACHE_BYTES; RSS grows with "
    "it until it is full)",
)
ASYNCIO_TASKS = Gauge(
    "vita_orchestrator_asyncio_tasks", "asyncio tasks alive on the serving event loop (a leak makes it grow)"
)


def watch_event_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Reads the task count at scrape time (from the metrics server's thread; all_tasks copies the set)."""
    ASYNCIO_TASKS.set_function(lambda: len(asyncio.all_tasks(loop)))
