"""What the speech engine does in one step, decided without touching the model (torch-free).

Each step the engine describes its open streams as `StreamView`s and asks `plan_step` for a `StepPlan`:
which streams start their next segment (NAR + prefill), which empty segments are finished on the way,
which streams are complete, and which streams take a row of this step's batched AR decode. After the AR
step, `plan_codec_calls` groups the codec windows that became ready into fixed-size codec calls.

The policy is one function, `urgency`: among streams that wait for a free AR row, the most urgent starts
first, and if more streams decode than there are rows, the most urgent get them. The inputs a better
policy needs (audio already delivered, segments waiting and since when) are in `StreamView`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class WaitingSegment:
    """A pushed segment that has not started yet."""

    index: int
    silent: bool  # nothing to say: finished as "empty" without touching the model
    enqueued_ns: int


@dataclass(frozen=True)
class StreamView:
    """What the scheduler knows about one open stream at the start of a step."""

    stream_id: str
    decoding_since_ns: int | None  # push time of the segment in the AR batch; None: no segment there
    waiting: tuple[WaitingSegment, ...]  # in push order
    ended: bool  # end_stream was applied: the stream completes once nothing is left
    audio_samples: int = 0  # PCM delivered so far
    buffered_audio_ns: int = 0  # delivered audio the listener cannot have played yet (real-time playback)

    @property
    def decoding(self) -> bool:
        return self.decoding_since_ns is not None


@dataclass(frozen=True)
class Admission:
    """What happens to one idle stream this step, in this order."""

    stream_id: str
    silent: tuple[int, ...] = ()  # empty segments at the head of the queue, finished now
    start: int | None = None  # the segment that starts synthesis (NAR + prefill) and joins the AR batch
    complete: bool = False  # ended and nothing left: the stream is done


@dataclass(frozen=True)
class StepPlan:
    admissions: tuple[Admission, ...]  # in the order they are applied
    rows: tuple[str, ...]  # streams in this step's AR decode, row by row


@dataclass(frozen=True)
class CodecCall:
    """One codec call: windows of equal length, at most the codec batch size."""

    length: int  # tokens per window
    windows: tuple[int, ...]  # positions in the list of ready windows


def urgency(view: StreamView) -> int:
    """Sort key, lower first: the push time of the segment the stream decodes or waits to start, so a
    burst of new streams cannot starve earlier ones (first come, first served across streams). A stream
    with nothing left to say only needs completing, which costs nothing: it goes first."""
    if view.decoding_since_ns is not None:
        return view.decoding_since_ns
    return view.waiting[0].enqueued_ns if view.waiting else 0


def plan_step(streams: Sequence[StreamView], max_rows: int) -> StepPlan:
    """Admit idle streams' next segments while AR rows are free, then pick this step's rows.

    `streams` is in the engine's stream order; rows keep that order (a row's position does not change its
    result, but a stable order keeps runs reproducible to the event).
    """
    decoding = sum(view.decoding for view in streams)
    idle = [view for view in streams if not view.decoding and (view.waiting or view.ended)]
    admissions: list[Admission] = []
    started: set[str] = set()
    for view in sorted(idle, key=urgency):
        silent: list[int] = []
        start: int | None = None
        for segment in view.waiting:
            if segment.silent:
                silent.append(segment.index)
                continue
            if decoding < max_rows:
                start = segment.index
                decoding += 1
            break  # one spoken segment at a time per stream
        taken = len(silent) + (start is not None)
        complete = view.ended and start is None and taken == len(view.waiting)
        if silent or start is not None or complete:
            admissions.append(Admission(view.stream_id, tuple(silent), start, complete))
        if start is not None:
            started.add(view.stream_id)
    candidates = [view for view in streams if view.decoding or view.stream_id in started]
    if len(candidates) > max_rows:
        chosen = {view.stream_id for view in sorted(candidates, key=urgency)[:max_rows]}
        candidates = [view for view in candidates if view.stream_id in chosen]
    return StepPlan(tuple(admissions), tuple(view.stream_id for view in candidates))


def plan_codec_calls(window_lengths: Sequence[int], batch_size: int) -> list[CodecCall]:
    """Groups ready windows by length (a call's windows must have one shape) into calls of at most
    `batch_size`; the runner pads each call to exactly `batch_size` windows so that a window's audio does
    not depend on how many others shared its call."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    by_length: dict[int, list[int]] = {}
    for position, length in enumerate(window_lengths):
        by_length.setdefault(length, []).append(position)
    return [
        CodecCall(length, tuple(positions[first : first + batch_size]))
        for length, positions in by_length.items()
        for first in range(0, len(positions), batch_size)
    ]
