"""The speech scheduler decides each step from plain stream views, without torch or a model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.speech.scheduler import (
    Admission,
    CodecCall,
    SchedulePolicy,
    StreamView,
    WaitingSegment,
    plan_codec_calls,
    plan_step,
    urgency,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _view(stream_id: str, *waiting: tuple[int, bool, int], decoding_since: int | None = None,
          ended: bool = False) -> StreamView:
    """`waiting`: (segment index, silent, push time) in push order."""
    segments = tuple(WaitingSegment(index, silent, pushed) for index, silent, pushed in waiting)
    return StreamView(stream_id, decoding_since, segments, ended)


def test_the_scheduler_and_the_stream_state_import_no_torch() -> None:
    modules = "services.speech.scheduler, services.speech.streams, services.speech.events, services.speech.playback"
    code = f"import sys, {modules}; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_idle_streams_start_their_next_segment_and_join_the_same_step() -> None:
    plan = plan_step([_view("a", (0, False, 10)), _view("b", (0, False, 20), (1, False, 30))], max_rows=4)
    assert plan.admissions == (Admission("a", start=0), Admission("b", start=0))
    assert plan.rows == ("a", "b")


def test_free_rows_go_to_the_oldest_waiting_segment_first() -> None:
    streams = [
        _view("busy", decoding_since=5),
        _view("late", (0, False, 300)),
        _view("early", (0, False, 100)),
        _view("middle", (4, False, 200)),
    ]
    plan = plan_step(streams, max_rows=3)
    assert [a.stream_id for a in plan.admissions] == ["early", "middle"]  # "late" waits for a free row
    assert plan.rows == ("busy", "early", "middle")  # rows keep the engine's stream order


def test_a_full_batch_starts_nothing_but_still_finishes_empty_segments_and_completes_streams() -> None:
    streams = [
        _view("a", decoding_since=1),
        _view("b", decoding_since=2),
        _view("silent-head", (0, True, 10), (1, False, 11)),
        _view("drained", ended=True),
        _view("only-silent", (0, True, 12), ended=True),
    ]
    plan = plan_step(streams, max_rows=2)
    assert plan.admissions == (
        Admission("drained", complete=True),  # nothing left: goes first, costs nothing
        Admission("silent-head", silent=(0,)),
        Admission("only-silent", silent=(0,), complete=True),
    )
    assert plan.rows == ("a", "b")


def test_one_spoken_segment_at_a_time_per_stream() -> None:
    plan = plan_step([_view("s", (0, True, 1), (1, False, 2), (2, True, 3), (3, False, 4), ended=True)], max_rows=8)
    assert plan.admissions == (Admission("s", silent=(0,), start=1),)  # segments behind it wait their turn
    assert plan.rows == ("s",)


def test_decoding_streams_and_streams_with_nothing_to_do_are_left_alone() -> None:
    plan = plan_step([_view("d", (1, False, 9), decoding_since=5), _view("idle")], max_rows=4)
    assert plan.admissions == ()
    assert plan.rows == ("d",)
    assert plan_step([], max_rows=1).rows == ()


def test_rows_never_exceed_the_batch_and_go_to_the_most_urgent() -> None:
    # More decoding streams than rows cannot arise from admission, but the row choice still holds the cap.
    streams = [_view("new", decoding_since=50), _view("old", decoding_since=10), _view("mid", decoding_since=20)]
    assert plan_step(streams, max_rows=2).rows == ("old", "mid")


def test_urgency_is_the_push_time_of_the_segment_in_hand() -> None:
    assert urgency(_view("d", (1, False, 9), decoding_since=5)) == 5
    assert urgency(_view("w", (0, False, 7), (1, False, 8))) == 7
    assert urgency(_view("e", ended=True)) == 0


def test_codec_calls_group_equal_lengths_up_to_the_batch_size_most_urgent_first() -> None:
    # The list comes most urgent first: a call goes as early as its first window.
    calls = plan_codec_calls([30, 40, 30, 30, 25, 40], batch_size=2)
    assert calls == [CodecCall(30, (0, 2)), CodecCall(40, (1, 5)), CodecCall(30, (3,)), CodecCall(25, (4,))]
    assert plan_codec_calls([30, 30], batch_size=1) == [CodecCall(30, (0,)), CodecCall(30, (1,))]
    assert plan_codec_calls([], batch_size=3) == []
    with pytest.raises(ValueError):
        plan_codec_calls([30], batch_size=0)


# ----- playback-deadline scheduling -----

MS = 1_000_000
POLICY = SchedulePolicy(yield_buffer_ns=3000 * MS, first_chunk_yield_ns=1000 * MS)


def _playing(stream_id: str, buffered_ms: int, now: int = 10_000 * MS, decoding: bool = True) -> StreamView:
    """A stream whose listener has `buffered_ms` of audio left at `now`."""
    return StreamView(stream_id, 5 if decoding else None, (), False, audio_samples=24_000,
                      buffered_audio_ns=buffered_ms * MS, deadline_ns=now + buffered_ms * MS)


def test_rows_go_to_the_listeners_about_to_run_dry() -> None:
    streams = [_playing("far1", 2500), _playing("near1", 150), _playing("far2", 2800), _playing("near2", 40)]
    plan = plan_step(streams, max_rows=2, policy=POLICY)
    assert plan.rows == ("near1", "near2")
    # Fewest buffered first, whatever the stream order or push time.
    assert sorted(streams, key=urgency)[0].stream_id == "near2"


def test_a_stream_past_its_threshold_yields_only_while_another_needs_the_engine() -> None:
    streams = [_playing("ahead", 7000), _playing("behind", 500)]
    plan = plan_step(streams, max_rows=8, policy=POLICY)
    assert plan.rows == ("behind",) and plan.yielding == {"ahead"}
    # Alone (or when everyone is ahead) it keeps its row: the engine never idles.
    assert plan_step([_playing("ahead", 7000)], max_rows=8, policy=POLICY).rows == ("ahead",)
    assert plan_step([_playing("a", 7000), _playing("b", 5000)], max_rows=8, policy=POLICY).rows == ("a", "b")
    # First come, first served (the old policy) never yields.
    assert plan_step(streams, max_rows=8).rows == ("ahead", "behind")


def test_a_new_streams_first_chunk_is_never_delayed_behind_a_stream_past_its_threshold() -> None:
    ahead = [_playing(f"ahead{i}", 1200 + 1000 * i) for i in range(4)]
    new = _view("new", (0, False, 9_999 * MS))
    plan = plan_step([*ahead, new], max_rows=1, policy=POLICY)
    assert plan.admissions == (Admission("new", start=0),)
    assert plan.rows == ("new",)
    assert plan.yielding == {s.stream_id for s in ahead}  # their codec windows wait too
    # Once it decodes, it keeps the row against streams buffered past the first-chunk threshold ...
    decoding = _view("new", decoding_since=9_999 * MS)
    assert plan_step([*ahead, decoding], max_rows=1, policy=POLICY).rows == ("new",)
    # ... and ahead of a stream with little audio left: its push time is earlier than that deadline.
    assert plan_step([_playing("low", 300), decoding], max_rows=1, policy=POLICY).rows == ("new",)


def test_a_stream_that_ran_dry_longer_ago_than_a_new_one_arrived_goes_first() -> None:
    now = 10_000 * MS
    dry = StreamView("dry", 5, (), False, 24_000, 0, deadline_ns=now - 800 * MS)
    new = _view("new", decoding_since=now - 100 * MS)
    assert plan_step([new, dry], max_rows=1, policy=POLICY).rows == ("dry",)


def test_no_stream_starves_under_overload_with_new_streams_arriving() -> None:
    """2 rows, 6 long streams and a new one every 7 steps; each row makes 20 ms of audio per 10 ms step,
    so the engine cannot keep up. Every stream still gets a row again within a bounded number of steps."""
    from services.speech.playback import PlaybackClock

    step_ns, audio_per_row = 10 * MS, 480  # 20 ms at 24 kHz
    clocks: dict[str, PlaybackClock] = {f"s{i}": PlaybackClock(24_000) for i in range(6)}
    pushed: dict[str, int] = dict.fromkeys(clocks, 0)
    last_row: dict[str, int] = dict.fromkeys(clocks, 0)
    longest_wait: dict[str, int] = dict.fromkeys(clocks, 0)
    for step in range(3000):
        now = step * step_ns
        if step % 7 == 3:  # a short new stream: 3 steps of work
            name = f"new{step}"
            clocks[name], pushed[name] = PlaybackClock(24_000), now
        views = []
        for name, clock in clocks.items():
            views.append(StreamView(name, pushed[name], (), False, clock.delivered_samples,
                                    clock.buffered_ns(now), clock.deadline_ns()))
        plan = plan_step(views, max_rows=2, policy=POLICY)
        assert len(plan.rows) <= 2
        for name in plan.rows:
            clocks[name].note_audio(audio_per_row, now + step_ns)
            if name in last_row:
                longest_wait[name] = max(longest_wait[name], step - last_row[name])
                last_row[name] = step
        for name in [n for n, c in clocks.items() if n.startswith("new") and c.delivered_samples >= 3 * audio_per_row]:
            del clocks[name], pushed[name]
    assert min(last_row.values()) > 2900, last_row  # every long stream still gets rows at the end
    assert max(longest_wait.values()) < 100, longest_wait
