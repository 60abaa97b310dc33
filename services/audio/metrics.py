"""Metrics of the audio service (vita_audio_*)."""

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import COMPUTE_BUCKETS_S, LATENCY_BUCKETS_S, RpcMetrics

RPC = RpcMetrics.declare("audio")
ACTIVE_STREAMS = Gauge("vita_audio_active_streams", "Audio streams open")
STREAMS = Counter(
    "vita_audio_streams_total",
    "Finished audio streams by outcome (completed, cancelled, invalid, rejected, unavailable, failed)",
    ["outcome"],
)
UTTERANCES = Counter(
    "vita_audio_utterances_total",
    "Stream utterances by outcome (ready, too_short, too_long, empty, cancelled, failed)",
    ["outcome"],
)
CLIPS = Counter("vita_audio_clips_total", "EncodeClip calls by outcome (ok, invalid, unavailable, failed)", ["outcome"])
AUDIO_SECONDS = Counter("vita_audio_received_audio_seconds_total", "Seconds of audio received on streams")
EOS_TO_READY_SECONDS = Histogram(
    "vita_audio_eos_to_ready_seconds",
    "End of speech (VAD or commit) seen by the server to the utterance's embeddings ready",
    buckets=LATENCY_BUCKETS_S,
)
ENCODE_SECONDS = Histogram(
    "vita_audio_encode_seconds",
    "Encoder compute per utterance or clip (remaining subsampling + transformer + adapter)",
    ["source"],
    buckets=COMPUTE_BUCKETS_S,
)
ENCODE_QUEUE_SECONDS = Histogram(
    "vita_audio_encode_queue_seconds", "Wait for the encoder worker", ["source"], buckets=LATENCY_BUCKETS_S
)
FEATURE_SECONDS = Histogram(
    "vita_audio_clip_feature_seconds", "EncodeClip decode + resample + fbank compute", buckets=COMPUTE_BUCKETS_S
)
VAD_LAG_SECONDS = Histogram(
    "vita_audio_vad_lag_seconds",
    "A chunk's arrival to its VAD decisions and features done (feature-thread wait + compute)",
    buckets=COMPUTE_BUCKETS_S,
)
