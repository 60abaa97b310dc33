"""Playback-deadline scheduling on the real engine and tiny model, against a simulated clock.

The engine's clock only advances by what each model call would cost on an engine whose throughput is
1.5x what its listeners need (the cost model below); the real compute time of the tiny model (and the
noise of a shared machine) does not enter, so the playback each listener would hear is exact.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from services.speech.engine import AudioEvent, SpeechEngine, StreamDoneEvent, StreamFailedEvent

MS = 1_000_000
LISTENERS = 8
TOKENS_PER_S = 40  # codec tokens per second of audio
HEADROOM = 1.5  # engine throughput / what the listeners need
# Per 8-row step (8 tokens): 1/(HEADROOM x 8 x 40 tokens/s) x 8 = 16.7 ms, with the reference's 40-token
# windows (60 tokens decoded per 40 kept): AR 1 ms + 0.5 ms/row, the rest codec, per decoded token.
AR_STEP_NS, AR_ROW_NS, NAR_NS = 1 * MS, MS // 2, 2 * MS
STEP_NS = int(1e9 / (HEADROOM * LISTENERS * TOKENS_PER_S) * LISTENERS)
CODEC_TOKEN_NS = (STEP_NS - AR_STEP_NS - LISTENERS * AR_ROW_NS) // int(LISTENERS * 1.5)


class SimulatedCost:
    """The engine's clock: advanced by the modelled cost of every model call the runner makes."""

    def __init__(self, engine: SpeechEngine, on_advance) -> None:
        self.now_ns = 0
        runner = engine._runner
        decode_step, decode_windows, begin_segment = runner.decode_step, runner.decode_windows, runner.begin_segment

        def timed_step(segments):
            self.now_ns += AR_STEP_NS + AR_ROW_NS * len(segments)
            on_advance()
            return decode_step(segments)

        def timed_windows(windows):
            self.now_ns += CODEC_TOKEN_NS * sum(w.tokens.shape[0] for w in windows)
            on_advance()
            return decode_windows(windows)

        def timed_begin(*args):
            self.now_ns += NAR_NS
            return begin_segment(*args)

        runner.decode_step, runner.decode_windows, runner.begin_segment = timed_step, timed_windows, timed_begin

    def clock(self) -> int:
        return self.now_ns


def _underruns(arrivals: list[tuple[int, int]]) -> tuple[int, float]:
    """(underruns, longest stall in ms) of a listener who starts at the first chunk and plays on."""
    underruns, longest, end = 0, 0.0, None
    for arrival, samples in arrivals:
        if end is not None and arrival > end:
            underruns += 1
            longest = max(longest, (arrival - end) / MS)
        end = max(end or arrival, arrival) + samples * 1_000_000_000 // 24_000
    return underruns, longest


STAGGER_NS = 700 * MS  # listener i's reply starts at i x this: new streams arrive while others play
TEXTS = ("Hi.", "The weather is lovely, so let us walk.", "Good morning, my friend, how are you today?")


def _run(tiny_models, tokenizer, **policy) -> dict[str, tuple[list[tuple[int, int]], np.ndarray]]:
    holder: dict[str, SimulatedCost] = {}
    engine = SpeechEngine(tiny_models, tokenizer, device="cpu", max_batch_size=LISTENERS, codec_tokens_per_text_token=25,
                          length_cap_base_tokens=30, max_codec_tokens=200, clock=lambda: holder["cost"].clock(), **policy)
    names = [f"s{i}" for i in range(LISTENERS)]
    arrivals: dict[str, list[tuple[int, int]]] = {name: [] for name in names}
    pcm: dict[str, list[np.ndarray]] = {name: [] for name in names}
    finished = {name: threading.Event() for name in names}
    due = list(names)  # replies not started yet, in start order

    def start_due_replies() -> None:  # on the engine thread, between model calls
        while due and holder["cost"].now_ns >= names.index(due[0]) * STAGGER_NS:
            name = due.pop(0)
            for index, text in enumerate(TEXTS):
                engine.push_segment(name, text, index)
            engine.end_stream(name)

    def listener(name: str):
        def on_event(event) -> None:
            if isinstance(event, AudioEvent):
                arrivals[name].append((holder["cost"].clock(), event.pcm.shape[0]))
                pcm[name].append(event.pcm)
                start_due_replies()
            elif isinstance(event, (StreamDoneEvent, StreamFailedEvent)):
                assert isinstance(event, StreamDoneEvent), event
                finished[name].set()
        return on_event

    holder["cost"] = SimulatedCost(engine, start_due_replies)
    engine.start()
    try:
        for i, name in enumerate(names):
            engine.open_stream(name, 100 + i, listener(name))
        start_due_replies()
        for name, done in finished.items():
            assert done.wait(120), f"{name} did not finish"
    finally:
        engine.stop()
    return {name: (arrivals[name], np.concatenate(pcm[name])) for name in names}


def _first_audio_ms(streams) -> list[float]:
    """Each listener's time to first audio, from the moment its reply started."""
    return [(arrivals[0][0] - i * STAGGER_NS) / MS for i, (arrivals, _) in enumerate(streams.values())]


@pytest.fixture(scope="module")
def deadline_run(tiny_models, tokenizer):
    return _run(tiny_models, tokenizer)


def test_eight_listeners_at_one_and_a_half_times_real_time_never_run_dry(deadline_run) -> None:
    for name, (arrivals, audio) in deadline_run.items():
        assert audio.size > 8 * 24_000, f"{name}: too little audio to mean anything"
        underruns, longest = _underruns(arrivals)
        assert underruns == 0, f"{name}: {underruns} underruns, longest stall {longest:.0f} ms"
    # Windows grew past the reference's 40 tokens once the listener had audio in hand.
    assert max(n for arrivals, _ in deadline_run.values() for _, n in arrivals) > 40 * 600


def test_new_replies_hear_their_first_audio_sooner_than_first_come_first_served(tiny_models, tokenizer,
                                                                                 deadline_run) -> None:
    """Same simulation, the old policy (reference chunking, no yielding): the replies that start while
    others play wait behind the others' codec windows. Simulated time, so no noise enters."""
    reference = _run(tiny_models, tokenizer, chunk_growth=0.0, yield_buffer_ms=None, first_chunk_yield_ms=None,
                     splice_hold_buffer_ms=10**9)
    # Same seeds and texts: the first segment (reference-sized windows in both) sounds the same.
    first_segment = 80 * 600
    for name, (_, audio) in deadline_run.items():
        assert audio[:first_segment].tobytes() == reference[name][1][:first_segment].tobytes()
    late_new, late_old = _first_audio_ms(deadline_run)[1:], _first_audio_ms(reference)[1:]
    assert max(late_new) < max(late_old), (late_new, late_old)
    assert sum(late_new) < sum(late_old), (late_new, late_old)
