"""What the audio service sends back: the protobuf messages of stream events and utterances, and the
fixed texts of its error statuses (details of an internal error go to the log only)."""

from __future__ import annotations

import numpy as np

from services.audio import metrics
from services.audio.events import AudioEvent, SpeechStarted, SpeechStopped, StageTiming, UtteranceDropped, UtteranceReady
from shared.tensors import to_proto
from vita.audio.v1 import audio_pb2
from vita.common.v1 import common_pb2

UNAVAILABLE_MESSAGE = "the audio service is shutting down; retry"
INTERNAL_MESSAGE = "audio processing failed inside the audio service"


def stage_timing(stage: str, queue_ns: int = 0, compute_ns: int = 0) -> common_pb2.StageTiming:
    return common_pb2.StageTiming(stage=stage, queue_ns=queue_ns, compute_ns=compute_ns)


def stage_timings(timings: tuple[StageTiming, ...]) -> list[common_pb2.StageTiming]:
    return [stage_timing(t.stage, t.queue_ns, t.compute_ns) for t in timings]


def pcm16_bytes(pcm16k: np.ndarray) -> bytes:
    return pcm16k.astype("<i2", copy=False).tobytes()


def event_message(event: AudioEvent) -> audio_pb2.AudioOutput:
    if isinstance(event, SpeechStarted):
        return audio_pb2.AudioOutput(speech_started=audio_pb2.SpeechStarted(offset_ms=round(event.offset_ms)))
    if isinstance(event, SpeechStopped):
        return audio_pb2.AudioOutput(speech_stopped=audio_pb2.SpeechStopped(offset_ms=round(event.offset_ms)))
    if isinstance(event, UtteranceDropped):
        return audio_pb2.AudioOutput(
            dropped=audio_pb2.UtteranceDropped(
                reason=audio_pb2.DropReason.Value(f"DROP_REASON_{event.reason.name}"),
                duration_ms=round(event.duration_ms),
            )
        )
    raise TypeError(f"unexpected stream event {type(event).__name__}")


def utterance_message(ready: UtteranceReady) -> audio_pb2.AudioOutput:
    metrics.UTTERANCES.labels("ready").inc()
    metrics.EOS_TO_READY_SECONDS.observe(ready.eos_to_ready_ns / 1e9)
    for timing in ready.timings:
        if timing.stage == "audio.encode":
            metrics.ENCODE_SECONDS.labels("stream").observe(timing.compute_ns / 1e9)
            metrics.ENCODE_QUEUE_SECONDS.labels("stream").observe(timing.queue_ns / 1e9)
    return audio_pb2.AudioOutput(
        utterance=audio_pb2.Utterance(
            index=ready.utterance_index,
            embeddings=to_proto(ready.embeddings),
            pcm16k=pcm16_bytes(ready.pcm16k),
            duration_ms=round(ready.duration_ms),
            eos_to_ready_ns=ready.eos_to_ready_ns,
            timings=stage_timings(ready.timings),
        )
    )
