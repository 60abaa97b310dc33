"""Silero voice activity detection and the utterance segmentation state machine (docs/MODEL.md#vad).

Model: the Silero VAD JIT file bundled in the installed `silero-vad` wheel (v5+ network), loaded from
disk; nothing is downloaded. It is loaded once per process and shared: we call its inner network with
an explicit per-stream state (64-sample context + LSTM state), which is exactly what the wheel's stateful
wrapper does (checked bit-for-bit) but lets any number of streams share one model without locks.

Windows: 512 samples (32 ms) at 16 kHz. The reference server fed 4096-sample (256 ms) windows to a v4
model; the v5+ network of the wheel only accepts 512-sample windows at 16 kHz, and the finer grid lowers
end-of-speech latency (decisions every 32 ms instead of 256 ms) and makes boundaries more precise. The
thresholds and durations keep the reference values.

State machine (per window, probability p):
  idle      → p ≥ start_threshold: speech starts; the utterance begins pre_roll_ms before the window
              (never before the end of the previous utterance or the start of the stream).
  speaking  → p < end_threshold starts (or continues) a silence run; p ≥ start_threshold resets it;
              values in between neither start nor reset it (the reference hysteresis, Silero VADIterator).
              A silence run of min_silence_ms ends the utterance: speech_stopped is the first silent
              sample, and the utterance audio runs to the end of the deciding window (pre-roll + speech +
              hang-over), as in the reference, whose model was served exactly such clips.
              Reaching max_utterance_ms cuts the utterance (a "too long" outcome) and the detector then
              waits for silence before it can start a new one, so the rest of a monologue is not served as
              a fresh turn.
Duration rules (min_utterance_ms drops) are applied by the stream, which owns the audio.
"""

from __future__ import annotations

import enum
import importlib.util
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pydantic import ValidationError, field_validator

from services.audio.features import MODEL_SAMPLE_RATE_HZ, AudioInputError
from shared.session_settings import VadSettings, describe

VAD_WINDOW_SAMPLES = 512  # the only window the v5+ network accepts at 16 kHz
_SILERO_CONTEXT_SAMPLES = 64  # the wrapper prepends the previous window's last 64 samples
_SILERO_STATE_SHAPE = (2, 1, 128)  # LSTM (h, c) for one stream
_SILERO_JIT_NAME = "silero_vad.jit"


class VadConfigError(AudioInputError):
    """VAD settings that cannot work; the message names the field."""


class VadConfig(VadSettings):
    """A stream's VAD settings: the session settings (defaults and bounds written once, in
    shared/session_settings.py) and the detector's window."""

    window_samples: int = VAD_WINDOW_SAMPLES

    def __init__(self, **fields) -> None:
        try:
            super().__init__(**fields)
        except ValidationError as error:
            raise VadConfigError(describe(error, "vad")) from None

    @field_validator("window_samples")
    @classmethod
    def _window(cls, value: int) -> int:
        if value != VAD_WINDOW_SAMPLES:
            raise ValueError(f"must be {VAD_WINDOW_SAMPLES} at 16 kHz")
        return value

    @staticmethod
    def ms_to_samples(ms: int) -> int:
        return ms * MODEL_SAMPLE_RATE_HZ // 1000

    @property
    def min_silence_samples(self) -> int:
        return self.ms_to_samples(self.min_silence_ms)

    @property
    def pre_roll_samples(self) -> int:
        return self.ms_to_samples(self.pre_roll_ms)

    @property
    def min_utterance_samples(self) -> int:
        return self.ms_to_samples(self.min_utterance_ms)

    @property
    def max_utterance_samples(self) -> int:
        return self.ms_to_samples(self.max_utterance_ms)


def silero_model_path() -> Path:
    """The JIT file inside the installed wheel, found without importing the package: importing
    `silero_vad` calls torch.set_num_threads(1) for the whole process."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the silero-vad package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / _SILERO_JIT_NAME
    if not path.is_file():
        raise RuntimeError(f"the silero-vad wheel has no {_SILERO_JIT_NAME}")
    return path


_thread_flags = threading.local()


def _pin_calling_thread_to_one_intra_op_thread() -> None:
    """The network is far too small to gain from intra-op threads, and on a busy host their OpenMP
    barriers cost ~50× (0.27 ms → 15 ms per window measured on 2 loaded cores). With torch's OpenMP
    backend the setting is per thread, so this pins only the threads that run VAD (stream callers);
    the engine worker sets its own count (`AudioEngine(intra_op_threads=...)`)."""
    if not getattr(_thread_flags, "pinned", False):
        torch.set_num_threads(1)
        _thread_flags.pinned = True


@dataclass
class SileroStreamState:
    """What the network carries from one window to the next, for one stream."""

    context: torch.Tensor  # [1, 64]
    rnn_state: torch.Tensor  # [2, 1, 128]


class SileroVad:
    """The shared, stateless-per-call Silero network; each stream holds its own `SileroStreamState`."""

    def __init__(self, network: torch.jit.ScriptModule) -> None:
        self._network = network

    @classmethod
    def load(cls, path: Path | None = None) -> SileroVad:
        with warnings.catch_warnings():
            # torch 2.13 marks jit.load deprecated; the wheel's torch model exists only as TorchScript
            # (torch is pinned, and the wheel's safetensors + a plain-torch port is the way out later).
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*", category=DeprecationWarning)
            wrapper = torch.jit.load(str(path or silero_model_path()), map_location="cpu")
        wrapper.eval()
        return cls(wrapper._model)  # the 16 kHz network: forward(x_with_context, state) -> (prob, state)

    @staticmethod
    def new_state() -> SileroStreamState:
        return SileroStreamState(torch.zeros(1, _SILERO_CONTEXT_SAMPLES), torch.zeros(*_SILERO_STATE_SHAPE))

    def probability(self, state: SileroStreamState, window: np.ndarray) -> float:
        """Speech probability of one 512-sample 16 kHz window; advances `state`."""
        if window.shape != (VAD_WINDOW_SAMPLES,):
            raise ValueError(f"VAD window must be {VAD_WINDOW_SAMPLES} samples, got {window.shape}")
        _pin_calling_thread_to_one_intra_op_thread()
        with torch.inference_mode():
            samples = torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32)).unsqueeze(0)
            framed = torch.cat([state.context, samples], dim=1)
            prob, state.rnn_state = self._network(framed, state.rnn_state)
            state.context = framed[:, -_SILERO_CONTEXT_SAMPLES:]
        return float(prob.item())


class VadDecisionKind(enum.Enum):
    SPEECH_START = "speech_start"
    SPEECH_END = "speech_end"
    TOO_LONG = "too_long"


@dataclass(frozen=True)
class VadDecision:
    """A segmentation decision; offsets are sample indices on the stream's 16 kHz timeline.

    SPEECH_START: `utterance_start` (pre-roll included). SPEECH_END: `speech_end` (first silent sample)
    and `cut` (end of the utterance audio, hang-over included). TOO_LONG: `cut` = start + max length.
    """

    kind: VadDecisionKind
    utterance_start: int
    speech_end: int | None = None
    cut: int | None = None


class _Phase(enum.Enum):
    IDLE = "idle"
    SPEAKING = "speaking"
    DRAINING = "draining"  # after a too-long cut: wait for silence before re-arming


class VadSegmenter:
    """Feeds 16 kHz samples of one stream through Silero in 512-sample windows and segments them."""

    def __init__(self, model: SileroVad, config: VadConfig) -> None:
        self.config = config
        self._model = model
        self._state = model.new_state()
        self._pending = np.zeros(0, dtype=np.float32)  # samples not yet forming a full window
        self._processed = 0  # samples already classified (a multiple of the window)
        self._phase = _Phase.IDLE
        self._utterance_start = 0
        self._silence_start: int | None = None
        self._previous_cut = 0
        self.last_probability = 0.0

    @property
    def processed_samples(self) -> int:
        """End of the classified part of the timeline; audio past it awaits a full window."""
        return self._processed

    @property
    def in_speech(self) -> bool:
        return self._phase is _Phase.SPEAKING

    def feed(self, samples: np.ndarray) -> list[VadDecision]:
        self._pending = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32)])
        window = self.config.window_samples
        decisions: list[VadDecision] = []
        usable = len(self._pending) // window * window
        for begin in range(0, usable, window):
            decision = self._step(self._pending[begin : begin + window])
            if decision is not None:
                decisions.append(decision)
        self._pending = self._pending[usable:]
        return decisions

    def force_end(self, at_sample: int) -> VadDecision | None:
        """Ends an utterance in progress now (commit or end of input); None when idle."""
        phase = self._phase
        self._phase = _Phase.IDLE
        self._silence_start = None
        if phase is not _Phase.SPEAKING:
            return None
        self._previous_cut = at_sample
        return VadDecision(VadDecisionKind.SPEECH_END, self._utterance_start, speech_end=at_sample, cut=at_sample)

    def cancel(self, at_sample: int) -> None:
        """Forgets an utterance in progress (client cancel). Like a too-long cut, the detector waits for
        silence before re-arming, so the rest of the cancelled speech does not start a new utterance."""
        if self._phase is _Phase.SPEAKING:
            self._phase = _Phase.DRAINING
        self._previous_cut = max(self._previous_cut, at_sample)

    def _step(self, window: np.ndarray) -> VadDecision | None:
        cfg = self.config
        window_start = self._processed
        self._processed += len(window)
        prob = self._model.probability(self._state, window)
        self.last_probability = prob

        if prob >= cfg.start_threshold:
            self._silence_start = None
        elif prob < cfg.end_threshold and self._silence_start is None and self._phase is not _Phase.IDLE:
            self._silence_start = window_start
        silence_long_enough = (
            self._silence_start is not None and self._processed - self._silence_start >= cfg.min_silence_samples
        )

        if self._phase is _Phase.IDLE:
            if prob >= cfg.start_threshold:
                self._phase = _Phase.SPEAKING
                self._utterance_start = max(window_start - cfg.pre_roll_samples, self._previous_cut, 0)
                return VadDecision(VadDecisionKind.SPEECH_START, self._utterance_start)
            return None

        if self._phase is _Phase.DRAINING:
            if silence_long_enough:
                self._phase = _Phase.IDLE
                self._silence_start = None
            return None

        if silence_long_enough:
            self._phase = _Phase.IDLE
            speech_end, self._silence_start = self._silence_start, None
            self._previous_cut = self._processed
            return VadDecision(
                VadDecisionKind.SPEECH_END, self._utterance_start, speech_end=speech_end, cut=self._processed
            )
        if self._processed - self._utterance_start >= cfg.max_utterance_samples:
            self._phase = _Phase.DRAINING
            cut = self._utterance_start + cfg.max_utterance_samples
            self._previous_cut = cut
            return VadDecision(VadDecisionKind.TOO_LONG, self._utterance_start, cut=cut)
        return None
