"""What reached the client. A cancelled turn's history is cut from what was delivered (to what was played
of it), and the user-facing latencies are measured when events are handed to the transport, not when
they were produced."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from services.orchestrator import metrics
from vita.assistant.v1 import assistant_pb2

BYTES_PER_SAMPLE = 2


@dataclass
class TurnDelivery:
    turn_id: str
    input_kind: str  # the latency metrics' `input` label: "text" | "audio" | "image"
    input_end_ns: int  # perf_counter_ns when the user's input ended
    speech_end_ns: int | None = None  # end of speech by VAD (spoken turns)
    dropped: bool = False  # set on cancel/barge-in: queued reply events are discarded, not sent
    # Text deltas sent, each with the token ids it came with (a lone state symbol has no text).
    deltas: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    audio_samples: int = 0
    audio_ms: float = 0.0  # real-time duration of the audio sent
    first_text_ns: int | None = None
    first_audio_ns: int | None = None
    _playback_end_ns: int = 0  # when the client would run out of audio, playing it as it arrives
    _last_audio_ns: int = 0

    def delivered_text(self) -> str:
        return "".join(text for text, _ in self.deltas)

    @property
    def token_ids(self) -> list[int]:
        return [token for _, ids in self.deltas for token in ids]

    def played_ms_at(self, now_ns: int) -> float:
        """Audio a client playing it as it arrives had played by `now_ns`: what was sent, less what was
        still ahead of the playhead then. Without stalls that is min(sent, time since the first chunk)."""
        if self.first_audio_ns is None:
            return 0.0
        ahead_ms = max(0, self._playback_end_ns - now_ns) / 1e6
        return max(0.0, self.audio_ms - ahead_ms)

    def on_text(self, text: str, token_ids: tuple[int, ...]) -> None:
        self.deltas.append((text, tuple(token_ids)))
        if not text:
            return
        if self.first_text_ns is None:
            self.first_text_ns = time.perf_counter_ns()
            metrics.TTFT_SECONDS.labels(self.input_kind).observe((self.first_text_ns - self.input_end_ns) / 1e9)

    def on_audio(self, num_samples: int, sample_rate_hz: int) -> None:
        now = time.perf_counter_ns()
        if self.first_audio_ns is None:
            self.first_audio_ns = now
            metrics.TTFA_SECONDS.labels(self.input_kind).observe((now - self.input_end_ns) / 1e9)
            if self.speech_end_ns is not None:
                metrics.EOS_TO_AUDIO_SECONDS.observe((now - self.speech_end_ns) / 1e9)
            self._playback_end_ns = now
        else:
            metrics.AUDIO_GAP_SECONDS.observe((now - self._last_audio_ns) / 1e9)
            if now > self._playback_end_ns:
                # The gap outlasted the audio already delivered ahead: a client playing as it
                # receives would have stalled.
                metrics.UNDERRUN_RISK.inc()
        self._last_audio_ns = now
        self._playback_end_ns = max(self._playback_end_ns, now) + int(num_samples * 1e9 / sample_rate_hz)
        self.audio_samples += num_samples
        self.audio_ms += num_samples * 1000 / sample_rate_hz

    def timings_ms(self) -> tuple[float, float, float]:
        """(ttft, ttfa, eos_to_audio) in ms; 0 where the event did not happen."""
        ttft = (self.first_text_ns - self.input_end_ns) / 1e6 if self.first_text_ns else 0.0
        ttfa = (self.first_audio_ns - self.input_end_ns) / 1e6 if self.first_audio_ns else 0.0
        eos = (
            (self.first_audio_ns - self.speech_end_ns) / 1e6
            if self.first_audio_ns and self.speech_end_ns is not None
            else 0.0
        )
        return ttft, ttfa, eos


@dataclass
class Outgoing:
    """One item of a stream's send queue. `build` makes the event at send time (for events that report
    on what was sent before them); `event` None with no build = bookkeeping only, nothing is sent."""

    event: assistant_pb2.ServerEvent | None = None
    turn: TurnDelivery | None = None
    droppable: bool = False  # reply data (text, audio): discarded if its turn was cancelled
    text: str = ""
    token_ids: tuple[int, ...] = ()
    audio_samples: int = 0
    sample_rate_hz: int = 0
    build: Callable[[], assistant_pb2.ServerEvent] | None = None

    def materialise(self) -> assistant_pb2.ServerEvent | None:
        event = self.build() if self.build is not None else self.event
        if event is not None:
            event.server_time_unix_ns = time.time_ns()
        return event

    def mark_sent(self) -> None:
        if self.turn is None:
            return
        if self.token_ids or self.text:
            self.turn.on_text(self.text, self.token_ids)
        if self.audio_samples:
            self.turn.on_audio(self.audio_samples, self.sample_rate_hz)
