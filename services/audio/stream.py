"""Per-client audio stream: PCM chunks in, VAD events and utterance embeddings out.

Streaming design (why it is exact and what is left at end of speech):
* Resampling (soxr stream state), VAD (Silero, 32 ms windows) and fbank (kaldi-native-fbank online) run
  as the chunks arrive, in the caller's thread. Fbank of an utterance starts at its first sample (the
  pre-roll), so its frames are bit-identical to one-shot fbank of the utterance.
* CMVN + Conv2dSubsampling4 are local in time (7-frame receptive field, stride 4): the engine worker
  computes the new 25 Hz rows while the user speaks, from frames [4i, 4i+7) of each row i. This equals the
  one-shot subsampling up to float rounding of differently shaped convolutions (tested ≤ 1e-5 on the
  final embeddings, typically ~1e-7).
* The transformer has full attention (every row sees every other row), so it and the adapter run once on
  the whole utterance at end of speech: exact, and the only model work left when the user stops.
  Measured end-of-speech → embeddings-ready: see scripts/bench_audio_eos.py.
* Offsets are samples on the stream's 16 kHz timeline (resampled input), exposed in ms.

Push-to-talk (vad_enabled=False): all audio between commits is one utterance. Only the encoder's hard
minimum (85 ms) and max_utterance_ms apply; min_utterance_ms is a VAD rule against clicks and coughs,
while a commit is an explicit request.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Protocol

import numpy as np

from services.audio.encoder import MIN_FBANK_FRAMES, num_encoder_frames, num_llm_tokens
from services.audio.encoding import EncodeResult, PartialEncoding
from services.audio.events import (
    AudioEvent,
    DropReason,
    SpeechStarted,
    SpeechStopped,
    StageTiming,
    StopReason,
    UtteranceDropped,
    UtteranceReady,
    samples_to_ms,
    wait_for_utterances,
)
from services.audio.features import (
    FRAME_LENGTH_SAMPLES,
    FRAME_SHIFT_SAMPLES,
    IncrementalFbank,
    PcmEncoding,
    StreamingResampler,
    decode_pcm,
    num_fbank_frames,
    parse_encoding,
    pcm16_to_float,
    to_pcm16,
    validate_float_samples,
)
from services.audio.vad import SileroVad, VadConfig, VadDecision, VadDecisionKind, VadSegmenter

# The encoder needs T ≥ 7 fbank frames: N ≥ 400 + 6·160 = 1360 samples (85 ms).
MIN_ENCODABLE_SAMPLES = FRAME_LENGTH_SAMPLES + (MIN_FBANK_FRAMES - 1) * FRAME_SHIFT_SAMPLES

# Importable from here as before the events moved out.
__all__ = [
    "MIN_ENCODABLE_SAMPLES", "AudioEvent", "AudioStream", "DropReason", "SpeechStarted", "SpeechStopped",
    "StageTiming", "StopReason", "UtteranceDropped", "UtteranceReady", "UtteranceEncoder", "expected_llm_tokens",
    "samples_to_ms", "wait_for_utterances",
]


class UtteranceEncoder(Protocol):
    """What a stream needs from the audio engine (services.audio.engine.AudioEngine is one)."""

    vad: SileroVad

    def schedule_subsample(self, partial: PartialEncoding) -> None: ...

    def encode_timed(self, features: PartialEncoding) -> Future[EncodeResult]: ...


class _Utterance:
    """The utterance being collected: its 16-bit samples, incremental fbank and subsampling state.

    Features are computed from the int16-quantised samples, i.e. from exactly the `pcm16k` that goes to
    history, so re-encoding an utterance from history reproduces its embeddings (lossless for 16 kHz
    pcm16 input; for float or resampled input it is a 16-bit requantisation, as the reference's wav).
    """

    def __init__(self, index: int, start: int) -> None:
        self.index = index
        self.start = start  # 16 kHz stream offset of its first sample
        self.chunks: list[np.ndarray] = []  # int16
        self.num_samples = 0
        self.fbank = IncrementalFbank()
        self.partial = PartialEncoding()

    def add(self, samples: np.ndarray) -> None:
        if samples.size == 0:
            return
        pcm = to_pcm16(samples)
        self.chunks.append(pcm)
        self.num_samples += pcm.size
        self.partial.append_frames(self.fbank.accept(pcm16_to_float(pcm)))

    def pcm16k(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.int16)


class AudioStream:
    """One client's audio stream. Calls are serialised by a lock, so any executor thread may make them;
    each call returns its events in stream order."""

    def __init__(
        self,
        engine: UtteranceEncoder,
        config: VadConfig,
        *,
        sample_rate_hz: int,
        encoding: PcmEncoding | str,
        vad_enabled: bool = True,
    ) -> None:
        self._engine = engine
        self.config = config
        self.encoding = parse_encoding(encoding)
        self._resampler = StreamingResampler(sample_rate_hz)
        self.vad_enabled = vad_enabled
        self._segmenter = VadSegmenter(engine.vad, config) if vad_enabled else None
        self._lock = threading.Lock()
        # Timeline bookkeeping: `_recent` holds 16 kHz samples [_recent_start, _total).
        self._recent = np.zeros(0, dtype=np.float32)
        self._recent_start = 0
        self._total = 0
        self._utterance: _Utterance | None = None
        self._fed_upto = 0  # timeline offset up to which the current utterance has its samples
        self._discarding = False  # push-to-talk: after a too-long cut, ignore audio until the commit
        self._next_index = 0

    @property
    def sample_rate_hz(self) -> int:
        return self._resampler.sample_rate_hz

    @property
    def position_samples(self) -> int:
        """16 kHz samples received so far (after resampling)."""
        return self._total

    # --- input ---------------------------------------------------------------------------------------

    def push(self, data: bytes) -> list[AudioEvent]:
        """Adds PCM bytes in the declared encoding and rate. A zero-length chunk is a no-op (keep-alive)."""
        if len(data) == 0:
            return []
        return self.push_samples(decode_pcm(data, self.encoding))

    def push_samples(self, samples: np.ndarray) -> list[AudioEvent]:
        """Adds float samples in [-1, 1] at the declared rate."""
        received_ns = time.perf_counter_ns()
        samples = np.asarray(samples, dtype=np.float32)
        validate_float_samples(samples)
        with self._lock:
            return self._accept(self._resampler.push(samples), received_ns)

    def commit(self) -> list[AudioEvent]:
        """Push-to-talk: the audio since the last commit is one utterance. With VAD: ends the utterance
        in progress now (a manual end of turn). A commit that ends no utterance (no speech in progress, or
        audio already discarded as too long) is answered with an empty drop, so every commit is answered."""
        received_ns = time.perf_counter_ns()
        with self._lock:
            events = self._accept(self._resampler.flush(), received_ns)
            if self._segmenter is not None:
                ended = self._force_end(StopReason.COMMIT, received_ns)
                return events + (ended or [UtteranceDropped(self._take_index(), DropReason.EMPTY, 0.0)])
            if self._discarding:
                self._discarding = False
                return events + [UtteranceDropped(self._take_index(), DropReason.EMPTY, 0.0)]
            if self._utterance is None:
                return events + [UtteranceDropped(self._take_index(), DropReason.EMPTY, 0.0)]
            return events + self._finish(self._total, self._total, StopReason.COMMIT, received_ns)

    def end_of_input(self) -> list[AudioEvent]:
        """The client closed its side: an utterance in progress is finished and encoded ("end drains")."""
        received_ns = time.perf_counter_ns()
        with self._lock:
            events = self._accept(self._resampler.flush(), received_ns)
            if self._segmenter is not None:
                # The partial window at the very end was never classified; it still belongs to the speech.
                return events + self._force_end(StopReason.END_OF_INPUT, received_ns)
            if self._utterance is None:
                return events
            return events + self._finish(self._total, self._total, StopReason.END_OF_INPUT, received_ns)

    def cancel(self) -> list[AudioEvent]:
        """Drops the utterance in progress ("cancel drops"); the stream stays usable."""
        with self._lock:
            if self._utterance is None:
                return []
            utterance, self._utterance = self._utterance, None
            if self._segmenter is not None:
                self._segmenter.cancel(self._total)
            return [UtteranceDropped(utterance.index, DropReason.CANCELLED, samples_to_ms(utterance.num_samples))]

    # --- internals -----------------------------------------------------------------------------------

    def _take_index(self) -> int:
        index, self._next_index = self._next_index, self._next_index + 1
        return index

    def _accept(self, samples: np.ndarray, received_ns: int) -> list[AudioEvent]:
        if samples.size:
            self._recent = np.concatenate([self._recent, samples])
            self._total += samples.size
        if self._segmenter is None:
            events = self._accept_push_to_talk(samples)
        else:
            events = self._accept_vad(samples, received_ns)
        self._trim_recent()
        return events

    def _accept_push_to_talk(self, samples: np.ndarray) -> list[AudioEvent]:
        if samples.size == 0 or self._discarding:
            return []
        events: list[AudioEvent] = []
        if self._utterance is None:
            start = self._total - samples.size
            self._utterance = _Utterance(self._take_index(), start)
            self._fed_upto = start
            events.append(SpeechStarted(self._utterance.index, start))
        limit = self._utterance.start + self.config.max_utterance_samples
        self._feed_utterance(min(self._total, limit))
        if self._total >= limit:
            self._discarding = True
            events += self._drop(self._utterance, limit, StopReason.MAX_LENGTH, DropReason.TOO_LONG)
        return events

    def _accept_vad(self, samples: np.ndarray, received_ns: int) -> list[AudioEvent]:
        assert self._segmenter is not None
        events: list[AudioEvent] = []
        for decision in self._segmenter.feed(samples):
            events += self._apply(decision, received_ns)
        if self._utterance is not None:
            self._feed_utterance(self._segmenter.processed_samples)
        return events

    def _apply(self, decision: VadDecision, received_ns: int) -> list[AudioEvent]:
        if decision.kind is VadDecisionKind.SPEECH_START:
            self._utterance = _Utterance(self._take_index(), decision.utterance_start)
            self._fed_upto = decision.utterance_start
            return [SpeechStarted(self._utterance.index, decision.utterance_start)]
        utterance = self._utterance
        assert utterance is not None and decision.cut is not None
        if decision.kind is VadDecisionKind.TOO_LONG:
            return self._drop(utterance, decision.cut, StopReason.MAX_LENGTH, DropReason.TOO_LONG)
        assert decision.speech_end is not None
        return self._finish(decision.speech_end, decision.cut, StopReason.SILENCE, received_ns)

    def _force_end(self, reason: StopReason, received_ns: int) -> list[AudioEvent]:
        assert self._segmenter is not None
        decision = self._segmenter.force_end(self._total)
        if decision is None or self._utterance is None:
            return []
        return self._finish(self._total, self._total, reason, received_ns)

    def _feed_utterance(self, upto: int) -> None:
        """Moves timeline samples [_fed_upto, upto) into the utterance, computing fbank as it goes."""
        utterance = self._utterance
        if utterance is None or upto <= self._fed_upto:
            return
        begin = self._fed_upto - self._recent_start
        utterance.add(self._recent[begin : upto - self._recent_start])
        self._fed_upto = upto
        self._engine.schedule_subsample(utterance.partial)

    def _trim_recent(self) -> None:
        """Keeps only what can still be needed: the utterance's unfed samples, or the pre-roll plus one
        unclassified VAD window while idle."""
        if self._utterance is not None:
            keep_from = self._fed_upto
        else:
            window = self.config.window_samples
            keep_from = self._total - self.config.pre_roll_samples - 2 * window
        drop = keep_from - self._recent_start
        if drop > 0:
            self._recent = self._recent[drop:]
            self._recent_start = keep_from

    def _drop(self, utterance: _Utterance, cut: int, stop: StopReason, reason: DropReason) -> list[AudioEvent]:
        self._utterance = None
        duration = samples_to_ms(cut - utterance.start)
        return [SpeechStopped(utterance.index, cut, stop), UtteranceDropped(utterance.index, reason, duration)]

    def _finish(self, speech_end: int, cut: int, stop: StopReason, eos_ns: int) -> list[AudioEvent]:
        """Ends the current utterance at `cut`: drops it if too short, else hands it to the engine."""
        utterance = self._utterance
        assert utterance is not None
        self._feed_utterance(cut)
        self._utterance = None
        length = cut - utterance.start
        minimum = MIN_ENCODABLE_SAMPLES
        if self._segmenter is not None:
            minimum = max(minimum, self.config.min_utterance_samples)
        if length < minimum:
            return [
                SpeechStopped(utterance.index, speech_end, stop),
                UtteranceDropped(utterance.index, DropReason.TOO_SHORT, samples_to_ms(length)),
            ]
        return [SpeechStopped(utterance.index, speech_end, stop, self._submit(utterance, eos_ns))]

    def _submit(self, utterance: _Utterance, eos_ns: int) -> Future[UtteranceReady]:
        pcm16k = utterance.pcm16k()
        duration_ms = samples_to_ms(utterance.num_samples)
        partial = utterance.partial
        ready: Future[UtteranceReady] = Future()

        def _complete(done: Future[EncodeResult]) -> None:
            error = done.exception()
            if error is not None:
                ready.set_exception(error)
                return
            result = done.result()
            speaking_ns = partial.subsample_ns - result.timing.eos_subsample_ns
            timings = (
                StageTiming("audio.subsample_while_speaking", 0, speaking_ns),
                StageTiming("audio.encode", result.timing.queue_ns, result.timing.compute_ns),
            )
            ready.set_result(
                UtteranceReady(
                    utterance_index=utterance.index,
                    embeddings=result.embeddings,
                    pcm16k=pcm16k,
                    duration_ms=duration_ms,
                    eos_to_ready_ns=result.ready_ns - eos_ns,
                    timings=timings,
                )
            )

        self._engine.encode_timed(partial).add_done_callback(_complete)
        return ready


def expected_llm_tokens(num_samples: int) -> int:
    """LLM positions an utterance of `num_samples` 16 kHz samples yields (samples → fbank frames → encoder
    rows → LLM tokens, docs/MODEL.md#audio-adapter)."""
    return num_llm_tokens(num_encoder_frames(num_fbank_frames(num_samples)))
