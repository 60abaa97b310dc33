"""What the speech engine does in one step, decided without touching the model (torch-free).

Each step the engine describes its open streams as `StreamView`s and asks `plan_step` for a `StepPlan`:
which streams start their next segment (NAR + prefill), which empty segments are finished on the way,
which streams are complete, and which streams take a row of this step's batched AR decode. After the AR
step, `plan_codec_calls` groups the codec windows that are due into codec calls.

Work goes earliest playback deadline first (`urgency`): a listener hears a stutter, not a better mean.
* A stream that has delivered no audio yet is waiting for its first chunk (time to first audio); its
  deadline is the push time of its segment, which is earlier than that of any listener who still has audio
  buffered, so new streams come first.
* Every other stream's deadline is when its listener runs out of audio (services.speech.playback): the
  least buffered goes first.
* A stream with more than `yield_buffer_ns` buffered yields its row (and its codec windows wait) while
  another stream needs the engine; while some stream waits for its first chunk, `first_chunk_yield_ns`
  is the threshold. The engine does the work of a yielding stream only when nothing more urgent is left,
  so it never idles. A yielding stream's buffer runs down in real time until it needs its row again, and a
  deadline stays fixed while its stream waits, so no stream starves.
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
    buffered_audio_ns: int = 0  # delivered audio its listener has not played yet
    deadline_ns: int | None = None  # when its listener runs out of audio; None: no audio delivered yet

    @property
    def decoding(self) -> bool:
        return self.decoding_since_ns is not None

    @property
    def needs_first_chunk(self) -> bool:
        """No audio yet and a spoken segment in hand: its time to first audio is running."""
        if self.deadline_ns is not None:
            return False
        return self.decoding or any(not segment.silent for segment in self.waiting)


@dataclass(frozen=True)
class SchedulePolicy:
    """How much audio a listener must have buffered before its stream gives way to others."""

    yield_buffer_ns: int | None = 3_000_000_000  # None: never yield (first come, first served)
    first_chunk_yield_ns: int | None = 1_000_000_000  # while a new stream waits for its first chunk

    def threshold_ns(self, first_chunk_waiting: bool) -> int | None:
        if first_chunk_waiting and self.first_chunk_yield_ns is not None:
            if self.yield_buffer_ns is None:
                return self.first_chunk_yield_ns
            return min(self.first_chunk_yield_ns, self.yield_buffer_ns)
        return self.yield_buffer_ns


FIRST_COME_FIRST_SERVED = SchedulePolicy(yield_buffer_ns=None, first_chunk_yield_ns=None)


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
    yielding: frozenset[str] = frozenset()  # streams far enough ahead to wait: no row, no codec window


@dataclass(frozen=True)
class CodecCall:
    """One codec call: windows of equal length, at most the codec batch size."""

    length: int  # tokens per window
    windows: tuple[int, ...]  # positions in the list of ready windows


def urgency(view: StreamView) -> int:
    """Sort key, lower first: the stream's playback deadline. Before its first audio, that is the push
    time of the segment it decodes or waits to start (already past, so ahead of every listener who still
    has audio). A stream with nothing left to say only needs completing, which costs nothing: it goes
    first."""
    if view.deadline_ns is not None:
        return view.deadline_ns
    if view.decoding_since_ns is not None:
        return view.decoding_since_ns
    return view.waiting[0].enqueued_ns if view.waiting else 0


def _wants_work(view: StreamView) -> bool:
    return view.decoding or any(not segment.silent for segment in view.waiting)


def yielding_streams(streams: Sequence[StreamView], policy: SchedulePolicy) -> frozenset[str]:
    """Streams buffered past their threshold, when another stream below it wants the engine; if every
    stream that wants work is past it, none yields (the engine would idle)."""
    threshold = policy.threshold_ns(any(view.needs_first_chunk for view in streams))
    if threshold is None:
        return frozenset()
    busy = [view for view in streams if _wants_work(view)]
    ahead = frozenset(view.stream_id for view in busy if view.buffered_audio_ns > threshold)
    return ahead if len(ahead) < len(busy) else frozenset()


def plan_step(streams: Sequence[StreamView], max_rows: int,
              policy: SchedulePolicy = FIRST_COME_FIRST_SERVED) -> StepPlan:
    """Admit idle streams' next segments while AR rows are free, then pick this step's rows.

    `streams` is in the engine's stream order; rows keep that order (a row's position does not change its
    result, but a stable order keeps runs reproducible to the event). A yielding stream keeps its segment
    (and KV cache) but takes no row, so the segments open at once are bounded by the open streams
    (admission control), not by max_rows.
    """
    yielding = yielding_streams(streams, policy)
    decoding = sum(view.decoding and view.stream_id not in yielding for view in streams)
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
            if decoding < max_rows and view.stream_id not in yielding:
                start = segment.index
                decoding += 1
            break  # one spoken segment at a time per stream
        taken = len(silent) + (start is not None)
        complete = view.ended and start is None and taken == len(view.waiting)
        if silent or start is not None or complete:
            admissions.append(Admission(view.stream_id, tuple(silent), start, complete))
        if start is not None:
            started.add(view.stream_id)
    candidates = [view for view in streams
                  if (view.decoding or view.stream_id in started) and view.stream_id not in yielding]
    if len(candidates) > max_rows:
        chosen = {view.stream_id for view in sorted(candidates, key=urgency)[:max_rows]}
        candidates = [view for view in candidates if view.stream_id in chosen]
    return StepPlan(tuple(admissions), tuple(view.stream_id for view in candidates), yielding)


def plan_codec_calls(window_lengths: Sequence[int], batch_size: int) -> list[CodecCall]:
    """Groups ready windows by length (a call's windows must have one shape) into calls of at most
    `batch_size`, in the order of the list (pass it most urgent first); the runner pads each call to
    exactly `batch_size` windows so that a window's audio does not depend on how many others shared its
    call."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    by_length: dict[int, list[int]] = {}
    for position, length in enumerate(window_lengths):
        by_length.setdefault(length, []).append(position)
    calls = [
        CodecCall(length, tuple(positions[first : first + batch_size]))
        for length, positions in by_length.items()
        for first in range(0, len(positions), batch_size)
    ]
    return sorted(calls, key=lambda call: call.windows[0])
