"""Metrics of the vision service (vita_vision_*). `kind` is image | video | frames."""

from typing import Callable

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import BATCH_SIZE_BUCKETS, COMPUTE_BUCKETS_S, LATENCY_BUCKETS_S, RpcMetrics

RPC = RpcMetrics.declare("vision")
REQUESTS = Counter(
    "vita_vision_requests_total",
    "Encode requests by media kind and outcome (ok, invalid, cancelled, unavailable, failed)",
    ["kind", "outcome"],
)
MEDIA_ERRORS = Counter(
    "vita_vision_media_errors_total",
    "Rejected media by kind and reason (empty, corrupt, unsupported, too_large, bad_dimensions, no_video_stream)",
    ["kind", "reason"],
)
DECODE_SECONDS = Histogram(
    "vita_vision_decode_seconds", "Decode, sampling and tiling per request", ["kind"], buckets=COMPUTE_BUCKETS_S
)
TILES = Counter("vita_vision_tiles_total", "Tiles and video frames encoded", ["kind"])
BATCH_SIZE = Histogram("vita_vision_batch_size", "Tiles per engine step", buckets=BATCH_SIZE_BUCKETS)
STEP_SECONDS = Histogram("vita_vision_step_seconds", "Encoder compute per engine step", buckets=COMPUTE_BUCKETS_S)
QUEUE_SECONDS = Histogram(
    "vita_vision_queue_seconds", "Wait from submission to a request's first engine step", buckets=LATENCY_BUCKETS_S
)
COMPUTE_SECONDS = Histogram(
    "vita_vision_compute_seconds", "Encoder time per request, its first step's start to its last step's end",
    buckets=COMPUTE_BUCKETS_S,
)
QUEUED_TILES = Gauge("vita_vision_queued_tiles", "Tiles waiting for the encoder")
QUEUED_REQUESTS = Gauge("vita_vision_queued_requests", "Requests with tiles waiting for the encoder")


def watch_engine(stats: Callable) -> None:
    """Saturation gauges read from the engine's `stats()` at scrape time: nothing on the encode path."""
    QUEUED_TILES.set_function(lambda: stats().queued_tiles)
    QUEUED_REQUESTS.set_function(lambda: stats().queued_requests)
