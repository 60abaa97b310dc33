"""The speech scheduler decides each step from plain stream views, without torch or a model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.speech.scheduler import (
    Admission,
    CodecCall,
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
    modules = "services.speech.scheduler, services.speech.streams, services.speech.events"
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


def test_codec_calls_group_equal_lengths_up_to_the_batch_size_in_issue_order() -> None:
    calls = plan_codec_calls([30, 40, 30, 30, 25, 40], batch_size=2)
    assert calls == [CodecCall(30, (0, 2)), CodecCall(30, (3,)), CodecCall(40, (1, 5)), CodecCall(25, (4,))]
    assert plan_codec_calls([30, 30], batch_size=1) == [CodecCall(30, (0,)), CodecCall(30, (1,))]
    assert plan_codec_calls([], batch_size=3) == []
    with pytest.raises(ValueError):
        plan_codec_calls([30], batch_size=0)
