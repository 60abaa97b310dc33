"""Metrics of the speech service (vita_speech_*)."""

from typing import Callable

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from shared.metrics import COMPUTE_BUCKETS_S, LATENCY_BUCKETS_S, RpcMetrics

RPC = RpcMetrics.declare("speech")
SEGMENTS = Counter("vita_speech_segments_total", "Synthesised text segments by finish reason", ["outcome"])
STREAMS = Counter("vita_speech_streams_total", "Synthesis streams by outcome", ["outcome"])
ACTIVE_STREAMS = Gauge("vita_speech_active_streams", "Synthesis streams open")
CODEC_TOKENS = Counter("vita_speech_codec_tokens_total", "Codec tokens generated (600 samples each)")
AUDIO_SECONDS = Counter("vita_speech_audio_seconds_total", "Seconds of 24 kHz audio produced")
QUEUE_SECONDS = Histogram("vita_speech_queue_seconds", "Wait before a segment started", buckets=LATENCY_BUCKETS_S)
STAGE_SECONDS = Histogram(
    "vita_speech_stage_seconds", "Compute per segment by stage", ["stage"], buckets=COMPUTE_BUCKETS_S
)
FIRST_CHUNK_SECONDS = Histogram(
    "vita_speech_first_chunk_seconds", "Stream start to its first PCM chunk", buckets=LATENCY_BUCKETS_S
)
DECODING_SEGMENTS = Gauge("vita_speech_decoding_segments", "Segments in the AR decode batch")
QUEUED_SEGMENTS = Gauge("vita_speech_queued_segments", "Segments pushed and waiting to start")


class _EngineTotals(Collector):
    """AR step counters read from the engine at scrape time. rate(ar_rows) / rate(ar_steps) is the
    mean AR batch size: how full the fixed-shape batch runs."""

    def __init__(self):
        self.stats: Callable | None = None

    def describe(self):
        return self._families(None)

    def collect(self):
        return self._families(self.stats() if self.stats is not None else None)

    @staticmethod
    def _families(stats):
        steps = CounterMetricFamily("vita_speech_ar_steps", "Batched AR decode steps")
        rows = CounterMetricFamily("vita_speech_ar_rows", "Active rows summed over AR decode steps")
        if stats is not None:
            steps.add_metric([], stats.ar_steps)
            rows.add_metric([], stats.ar_rows)
        return [steps, rows]


ENGINE_TOTALS = _EngineTotals()
REGISTRY.register(ENGINE_TOTALS)


def watch_engine(stats: Callable) -> None:
    """Batch gauges and counters read from the engine's `stats()` at scrape time: nothing on the AR path."""
    DECODING_SEGMENTS.set_function(lambda: stats().decoding_segments)
    QUEUED_SEGMENTS.set_function(lambda: stats().queued_segments)
    ENGINE_TOTALS.stats = stats
