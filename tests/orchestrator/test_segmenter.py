from services.orchestrator.segmenter import Segmenter

TEXT = "☜Hello there, friend. This is a longer sentence without any break at all for quite a while now! Tail"


def segments_of(deltas: list[str]) -> list[str]:
    seg = Segmenter(first_max_chars=40, min_chars=5, max_chars=60)
    out = []
    for delta in deltas:
        out += seg.push(delta)
    return out + seg.flush()


def test_first_segment_ends_at_first_punctuation_and_symbols_are_dropped():
    segments = segments_of([TEXT])
    assert segments[0] == "Hello there,"
    assert all("☜" not in s for s in segments)
    assert segments[-1] == "Tail"  # the unpunctuated tail is still spoken


def test_segments_do_not_depend_on_how_the_text_was_split():
    whole = segments_of([TEXT])
    by_char = segments_of(list(TEXT))
    by_threes = segments_of([TEXT[i : i + 3] for i in range(0, len(TEXT), 3)])
    assert whole == by_char == by_threes


def test_text_without_punctuation_is_cut_at_a_maximum_length():
    words = " ".join(["word"] * 60)
    segments = segments_of([words])
    assert len(segments) > 2
    assert len(segments[0]) <= 40 + 20 and all(len(s) <= 60 + 20 for s in segments)
    assert " ".join(segments).split() == words.split()


def test_later_segments_wait_for_min_chars():
    segments = segments_of(["Ok. a, b, cdefgh, ij."])
    assert segments[0] == "Ok."
    assert segments[1] == "a, b,"


def test_unpunctuated_cjk_text_is_cut_at_the_limit_not_later():
    text = "今天天气很好我们一起去公园散步然后吃午饭再回家休息一下晚上看电影听音乐读书写字画画"
    segments = segments_of([text])
    assert len(segments[0]) == 40
    assert "".join(segments) == text
