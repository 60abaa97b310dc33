"""Per-turn samples (what a client saw, and when) → the benchmark's metrics.

Both runners fill the same `TurnSample` at the same points: a turn's input end is when the client sent
its last input (the `turn` event, the `audio_commit`, or for server VAD the last voiced audio); first
text / first audio are when the first text_delta / audio chunk reached the client (distributed) or the
reply sink (in-process). All times are `time.perf_counter()` seconds of the client process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class TurnSample:
    session: int
    index: int  # turn number within the session (warmup turns first)
    kind: str  # "text" | "spoken" | "image"
    warmup: bool
    input_end: float = 0.0
    speech_end: float | None = None  # spoken turns: when the last voiced audio was sent
    first_text: float | None = None
    last_text: float | None = None
    # When the text that completes the reply's first speech segment arrived (the orchestrator's segmenter
    # rule, default limits, replayed on the client): splits TTFA into LLM and speech parts.
    first_segment: float | None = None
    first_audio: float | None = None
    finished: float | None = None
    audio_chunks: list[tuple[float, int]] = field(default_factory=list)  # (arrival, samples)
    sample_rate_hz: int = 24_000
    reply_tokens: int = 0
    prefilled_tokens: int = 0  # prompt tokens the LLM computed (the rest came from its KV cache)
    cached_tokens: int = 0
    # Stage → [queue_ms, compute_ms], summed over the turn (several speech segments).
    stages: dict[str, list[float]] = field(default_factory=dict)
    # What the orchestrator measured (TurnCompleted.timings): from when it received the input to when it
    # handed the event to its transport; the difference to ttft/ttfa is the client↔orchestrator leg.
    server_ttft_ms: float | None = None
    server_ttfa_ms: float | None = None
    outcome: str = ""
    error: str | None = None  # "CODE: message" when the turn failed
    unsupported: bool = False  # the server (or the in-process runner) does not serve this input kind

    # ----- derived -----

    @property
    def ok(self) -> bool:
        return self.error is None and not self.unsupported and self.finished is not None

    @property
    def ttft_ms(self) -> float | None:
        return _ms(self.first_text, self.input_end)

    @property
    def ttfa_ms(self) -> float | None:
        return _ms(self.first_audio, self.input_end)

    @property
    def eos_to_audio_ms(self) -> float | None:
        return _ms(self.first_audio, self.speech_end) if self.speech_end is not None else None

    @property
    def _segment_ready(self) -> float | None:
        # A reply too short (or too unpunctuated) to cut is spoken whole when the LLM finishes.
        return self.first_segment if self.first_segment is not None else self.last_text

    @property
    def first_segment_ms(self) -> float | None:
        return _ms(self._segment_ready, self.input_end) if self.first_audio is not None else None

    @property
    def segment_to_audio_ms(self) -> float | None:
        return _ms(self.first_audio, self._segment_ready)

    @property
    def audio_s(self) -> float:
        return sum(n for _, n in self.audio_chunks) / self.sample_rate_hz

    @property
    def synthesis_s(self) -> float:
        """Speech service wall time spent on this turn's segments (NAR + prefill, AR steps, codec)."""
        return sum(compute for stage, (_, compute) in self.stages.items() if stage.startswith("speech.")) / 1000

    @property
    def rtf(self) -> float | None:
        """Real-time factor of the speech output: synthesis wall time / audio duration (< 1 = faster
        than real time)."""
        if self.audio_s <= 0 or self.synthesis_s <= 0:
            return None
        return self.synthesis_s / self.audio_s

    @property
    def llm_tokens_per_s(self) -> float | None:
        """This turn's decode speed: tokens after the first / LLM decode time (first token → last)."""
        decode_ms = self.stages.get("llm.decode", [0.0, 0.0])[1]
        if self.reply_tokens < 2 or decode_ms <= 0:
            return None
        return (self.reply_tokens - 1) / (decode_ms / 1000)

    def playback(self) -> tuple[int, float]:
        """(underruns, stalled ms) of a client that starts playing at the first audio chunk and plays
        continuously: a chunk that arrives after the audio before it has run out is a stall."""
        end: float | None = None
        underruns, stalled = 0, 0.0
        for arrival, samples in self.audio_chunks:
            if end is None:
                end = arrival
            elif arrival > end:
                underruns += 1
                stalled += arrival - end
                end = arrival
            end += samples / self.sample_rate_hz
        return underruns, stalled * 1000

    def on_text(self, text: str, arrived: float, watch: "FirstSegmentWatch") -> None:
        if not text:
            return
        self.first_text = self.first_text or arrived
        self.last_text = arrived
        if self.first_segment is None and watch.push(text):
            self.first_segment = arrived

    def add_stage(self, stage: str, queue_ms: float, compute_ms: float) -> None:
        totals = self.stages.setdefault(stage, [0.0, 0.0])
        totals[0] += queue_ms
        totals[1] += compute_ms


class FirstSegmentWatch:
    """Replays the orchestrator's segmenter (default limits) on the streamed text: `push` returns True
    when the first speech segment is complete."""

    def __init__(self):
        from services.orchestrator.config import OrchestratorSettings
        from services.orchestrator.segmenter import Segmenter

        defaults = OrchestratorSettings.model_fields
        self._segmenter = Segmenter(defaults["first_segment_max_chars"].default, defaults["segment_min_chars"].default,
                                    defaults["segment_max_chars"].default)

    def push(self, text: str) -> bool:
        return bool(self._segmenter.push(text))


def _ms(later: float | None, earlier: float | None) -> float | None:
    if later is None or earlier is None:
        return None
    return (later - earlier) * 1000


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    position = (len(sorted_values) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summarize(values) -> dict | None:
    """{p50, p90, p99, mean, min, max, n} of the values that are not None; None if there are none."""
    data = sorted(v for v in values if v is not None)
    if not data:
        return None
    return {
        "p50": percentile(data, 50),
        "p90": percentile(data, 90),
        "p99": percentile(data, 99),
        "mean": sum(data) / len(data),
        "min": data[0],
        "max": data[-1],
        "n": len(data),
    }


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals."""
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def run_metrics(samples: list[TurnSample], wall_s: float) -> dict:
    """The metrics of one run (one concurrency) over its measured turns."""
    measured = [s for s in samples if not s.warmup]
    ok = [s for s in measured if s.ok]
    playback = [s.playback() for s in ok if s.audio_chunks]
    stage_names = sorted({name for s in ok for name in s.stages})
    reply_tokens = sum(s.reply_tokens for s in ok)
    audio_s = sum(s.audio_s for s in ok)
    decode_intervals = [(s.first_text, s.last_text) for s in ok if s.first_text is not None and s.last_text is not None]
    decode_busy_s = busy_seconds(decode_intervals)
    return {
        "turns": len(ok),
        "turns_by_kind": {kind: sum(1 for s in ok if s.kind == kind) for kind in sorted({s.kind for s in measured})},
        "failed_turns": sum(1 for s in measured if s.error is not None),
        "unsupported_turns": sum(1 for s in measured if s.unsupported),
        "errors": sorted({s.error for s in measured if s.error is not None}),
        "ttft_ms": summarize(s.ttft_ms for s in ok),
        "ttfa_ms": summarize(s.ttfa_ms for s in ok),
        "eos_to_audio_ms": summarize(s.eos_to_audio_ms for s in ok),
        "first_segment_ms": summarize(s.first_segment_ms for s in ok),
        "segment_to_audio_ms": summarize(s.segment_to_audio_ms for s in ok),
        "server_ttft_ms": summarize(s.server_ttft_ms for s in ok),
        "server_ttfa_ms": summarize(s.server_ttfa_ms for s in ok),
        "rtf": summarize(s.rtf for s in ok),
        "underruns": summarize(u for u, _ in playback),
        "underrun_stall_ms": summarize(stall for _, stall in playback),
        "underruns_total": sum(u for u, _ in playback),
        "turns_with_underruns": sum(1 for u, _ in playback if u),
        "llm_tokens_per_s": summarize(s.llm_tokens_per_s for s in ok),
        "reply_tokens": summarize(s.reply_tokens for s in ok),
        "prefilled_tokens": summarize(s.prefilled_tokens for s in ok),
        "cached_tokens": summarize(s.cached_tokens for s in ok),
        "audio_s_per_turn": summarize(s.audio_s for s in ok if s.audio_chunks),
        "stages": {
            name: {
                "queue_ms": summarize(s.stages[name][0] for s in ok if name in s.stages),
                "compute_ms": summarize(s.stages[name][1] for s in ok if name in s.stages),
            }
            for name in stage_names
        },
        "throughput": {
            "wall_s": wall_s,
            "turns_per_s": len(ok) / wall_s if wall_s > 0 else None,
            "audio_s_per_s": audio_s / wall_s if wall_s > 0 else None,
            # Reply tokens per wall second of the measured window (the system's LLM throughput) …
            "llm_tokens_per_s": reply_tokens / wall_s if wall_s > 0 else None,
            # … and per second during which at least one reply was streaming text (first → last delta).
            "llm_tokens_per_busy_s": reply_tokens / decode_busy_s if decode_busy_s > 0 else None,
            "llm_busy_fraction": decode_busy_s / wall_s if wall_s > 0 else None,
        },
    }
