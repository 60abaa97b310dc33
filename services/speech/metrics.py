"""Metrics of the speech service (vita_speech_*)."""

from prometheus_client import Counter, Gauge, Histogram

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
