"""Metrics of the LLM service (vita_llm_*)."""

from typing import Callable

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import BATCH_SIZE_BUCKETS, COMPUTE_BUCKETS_S, LATENCY_BUCKETS_S, RpcMetrics

RPC = RpcMetrics.declare("llm")
REQUESTS = Counter("vita_llm_requests_total", "Generate requests by finish reason", ["outcome"])
QUEUE_SECONDS = Histogram("vita_llm_queue_seconds", "Wait before a request's prefill started", buckets=LATENCY_BUCKETS_S)
PREFILL_SECONDS = Histogram("vita_llm_prefill_seconds", "Prefill compute per request", buckets=COMPUTE_BUCKETS_S)
DECODE_SECONDS = Histogram("vita_llm_decode_seconds", "Decode compute per request", buckets=LATENCY_BUCKETS_S)
PROMPT_TOKENS = Counter("vita_llm_prompt_tokens_total", "Prompt tokens by how they were served", ["source"])
GENERATED_TOKENS = Counter("vita_llm_generated_tokens_total", "Generated tokens")
TOKENS_PER_SECOND = Histogram(
    "vita_llm_decode_tokens_per_second",
    "Per-request decode speed",
    buckets=(5, 10, 20, 40, 60, 80, 100, 150, 200, 300, 500, 1000),
)
BATCH_SIZE = Histogram("vita_llm_batch_size", "Largest decode batch a request ran in", buckets=BATCH_SIZE_BUCKETS)
CACHED_SESSIONS = Gauge("vita_llm_kv_cached_sessions", "Sessions holding a KV cache")
CACHED_TOKENS = Gauge("vita_llm_kv_cached_tokens", "Tokens held in session KV caches")
RUNNING = Gauge("vita_llm_running_requests", "Requests in the decode batch")
WAITING = Gauge("vita_llm_waiting_requests", "Requests waiting for prefill")
KV_CACHE_BYTES = Gauge("vita_llm_kv_cache_bytes", "Device memory held by KV caches, idle and active")


def watch_engine(stats: Callable) -> None:
    """Saturation gauges read from the engine's `stats()` at scrape time: nothing on the decode path."""
    RUNNING.set_function(lambda: stats().running)
    WAITING.set_function(lambda: stats().waiting)
    KV_CACHE_BYTES.set_function(lambda: stats().kv_cache_bytes)
