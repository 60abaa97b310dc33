"""Which part of a reply was heard, from the played duration and the spoken segments."""

from __future__ import annotations

from services.orchestrator.pipeline import SpokenSegment
from services.orchestrator.played import heard_chars, keep_deltas, word_prefix

REPLY = "One two three, four five six, seven eight nine."
SEGMENTS = [SpokenSegment("One two three,", 1000, True), SpokenSegment("four five six,", 1000, True),
            SpokenSegment("seven eight nine.", 1000, True)]


def heard(played_ms: float, segments=SEGMENTS) -> str:
    return REPLY[: heard_chars(REPLY, segments, played_ms)]


def test_whole_segments_then_a_word_boundary_share_of_the_one_playing():
    assert heard(0) == ""
    assert heard(999) == "One two three"  # 13 of 14 characters: the last whole word
    assert heard(1000) == "One two three,"
    assert heard(1500) == "One two three, four"  # half of "four five six," is "four fi": cut to "four"
    assert heard(2000) == "One two three, four five six,"
    assert heard(10_000) == REPLY


def test_a_segment_still_being_synthesised_is_measured_at_the_pace_of_the_finished_ones():
    # Segment 1 has produced 200 ms so far; at the pace of segment 0 (1000 ms for 14 characters) its
    # 14 characters last about 1000 ms, so 200 ms into it is not past its first word.
    segments = [SEGMENTS[0], SpokenSegment("four five six,", 200, False)]
    assert heard(1200, segments) == "One two three,"
    assert heard(1300, segments) == "One two three, four"


def test_words_end_at_spaces_punctuation_or_cjk_characters():
    assert word_prefix("hello world", 8) == 5
    assert word_prefix("hello world", 3) == 0
    assert word_prefix("你好世界", 3) == 3
    assert word_prefix("yes,no", 5) == 4


def test_kept_text_is_cut_back_to_whole_deltas_with_their_token_ids():
    deltas = [("", (7,)), ("One", (1,)), (" two", (2,)), (" thr", (3,)), ("ee,", (4,))]
    assert keep_deltas(deltas, 0) == ("", [7])
    assert keep_deltas(deltas, 9) == ("One two", [7, 1, 2])
    assert keep_deltas(deltas, 14) == ("One two three,", [7, 1, 2, 3, 4])
