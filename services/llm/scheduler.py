"""What the LLM engine runs next: the policy half of each step, with no model and no torch.

Each step, `schedule()` returns a `StepPlan`:
* at most ONE prefill chunk, for the request at the head of the waiting queue, and only while the decode
  batch has room. A long prompt is thus spread over several steps and never stalls running decodes by
  more than one chunk. On a request's first chunk the plan also says which cache it continues
  (`Admission`): the session's idle cache or a copy of a live request of the same session, whichever
  shares the longer prefix with the prompt;
* ONE batched decode over every running request, plus the prefilled request when its chunk completes
  the prompt (it decodes its second token in the same step it samples its first);
* the requests refused at admission (media rows neither sent nor cached), to fail.

The runner executes the plan on the model; the engine reports back (`prefilled`, `start_decoding`,
`decoded`) and asks `finish_reason` after every token. Requests join and leave the batch between steps.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from services.llm.kv_cache import CacheEntry, Key, SessionCacheStore, common_prefix_length
from services.llm.requests import (
    EmbeddingSegment,
    EventCallback,
    GenerationRequest,
    MissingMediaRows,
    Segment,
    TokenSegment,
)

if TYPE_CHECKING:
    import torch

    from services.llm.model import KVCache


@dataclass
class Span:
    start: int  # first prompt position of the segment
    segment: Segment

    @property
    def end(self) -> int:
        seg = self.segment
        return self.start + (len(seg.ids) if isinstance(seg, TokenSegment) else seg.num_rows)


def prompt_layout(segments: Sequence[Segment]) -> tuple[list[Key], list[Span]]:
    """The key of every prompt position, and where each segment starts."""
    keys: list[Key] = []
    spans: list[Span] = []
    for segment in segments:
        spans.append(Span(len(keys), segment))
        if isinstance(segment, TokenSegment):
            keys.extend(segment.ids)
        else:
            keys.extend((segment.content_id, row) for row in range(segment.num_rows))
    return keys, spans


class Status(enum.Enum):
    WAITING = "waiting"  # queued or being prefilled
    RUNNING = "running"  # in the decode batch
    DONE = "done"  # finished, cancelled or failed


@dataclass(eq=False)
class RequestState:
    """A submitted request, owned by the engine thread."""

    request: GenerationRequest
    on_event: EventCallback
    keys: list[Key]  # prompt keys
    spans: list[Span]
    submitted_ns: int
    status: Status = Status.WAITING
    admitted: bool = False  # its cache was chosen (the runner holds it from then on)
    num_computed: int = 0  # positions in its cache
    cache: KVCache | None = None  # set by the runner on admission
    generator: torch.Generator | None = None  # set by the runner on admission when sampling
    cached_tokens: int = 0
    prefilled_tokens: int = 0
    generated: list[int] = field(default_factory=list)
    admitted_ns: int = 0
    first_token_ns: int = 0
    batch_size_max: int = 0
    keep_cache: bool = True  # False after release_session: the session's state must not come back

    @classmethod
    def create(cls, request: GenerationRequest, on_event: EventCallback) -> RequestState:
        keys, spans = prompt_layout(request.segments)
        return cls(request=request, on_event=on_event, keys=keys, spans=spans, submitted_ns=time.perf_counter_ns())

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def session_id(self) -> str:
        return self.request.session_id

    @property
    def prompt_tokens(self) -> int:
        return len(self.keys)

    def fed_keys(self) -> list[Key]:
        """Keys of the positions in the cache: the prompt, then generated tokens that were fed back."""
        return (self.keys + self.generated)[: self.num_computed]


@dataclass(frozen=True)
class Admission:
    """The cache a request continues: its first `reuse_tokens` positions come from `from_entry` (the
    session's idle cache, already taken out of the store) or are copied from `from_request`; with
    neither, a fresh cache. Room for `capacity` positions is reserved."""

    reuse_tokens: int
    capacity: int
    from_entry: CacheEntry | None = None
    from_request: RequestState | None = None


@dataclass(frozen=True)
class PrefillChunk:
    request: RequestState
    start: int  # prompt positions [start, end) run this step
    end: int
    admission: Admission | None  # set on the request's first chunk

    @property
    def completes_prompt(self) -> bool:
        return self.end == self.request.prompt_tokens


@dataclass(frozen=True)
class StepPlan:
    prefill: PrefillChunk | None = None
    decode: list[RequestState] = field(default_factory=list)
    rejected: list[tuple[RequestState, Exception]] = field(default_factory=list)


class Scheduler:
    def __init__(self, *, max_batch_size: int, prefill_chunk_tokens: int, max_context_tokens: int,
                 store: SessionCacheStore):
        self.max_batch_size = max_batch_size
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.max_context_tokens = max_context_tokens
        self.store = store
        self.waiting: deque[RequestState] = deque()
        self.running: list[RequestState] = []
        self._by_id: dict[str, RequestState] = {}

    # ------------------------------------------------------------------------------- requests in and out

    def add(self, state: RequestState) -> None:
        self.waiting.append(state)
        self._by_id[state.request_id] = state

    def get(self, request_id: str) -> RequestState | None:
        return self._by_id.get(request_id)

    def live(self) -> list[RequestState]:
        return list(self._by_id.values())

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def release_session(self, session_id: str) -> None:
        """Forget the session's idle cache, and keep its live requests from storing theirs."""
        self.store.take(session_id)
        for state in self._by_id.values():
            if state.session_id == session_id:
                state.keep_cache = False

    def detach(self, state: RequestState) -> None:
        self._by_id.pop(state.request_id, None)
        if state.status is Status.RUNNING:
            self.running.remove(state)
        elif state.status is Status.WAITING and state in self.waiting:
            self.waiting.remove(state)
        state.status = Status.DONE

    def finish(self, state: RequestState) -> None:
        """End normally or by cancel. The cache holds exactly the fed keys at a step boundary, so it is
        stored for the session either way (after a cancel: the part computed so far)."""
        self.detach(state)
        if state.cache is not None and state.keep_cache:
            self.store.put(state.session_id, CacheEntry(state.cache, state.fed_keys()))

    # ------------------------------------------------------------------------------------------ the plan

    def schedule(self) -> StepPlan:
        prefill: PrefillChunk | None = None
        rejected: list[tuple[RequestState, Exception]] = []
        if self.waiting and len(self.running) < self.max_batch_size:
            state = self.waiting[0]
            try:
                admission = None if state.admitted else self._admit(state)
            except MissingMediaRows as error:
                rejected.append((state, error))
            else:
                start = state.num_computed
                end = min(state.prompt_tokens, start + self.prefill_chunk_tokens)
                prefill = PrefillChunk(state, start, end, admission)
        decode = list(self.running)
        if prefill is not None and prefill.completes_prompt:
            decode.append(prefill.request)
        return StepPlan(prefill=prefill, decode=decode, rejected=rejected)

    def _admit(self, state: RequestState) -> Admission:
        """The longest common prefix among the session's idle cache and the caches of other live requests
        of the same session (copied, never shared)."""
        state.admitted_ns = time.perf_counter_ns()
        session_id = state.session_id
        # The last prompt position is always fed: its logits give the first token.
        reusable = state.prompt_tokens - 1
        best_length = 0
        best_entry: CacheEntry | None = None
        best_request: RequestState | None = None
        entry = self.store.peek(session_id)
        if entry is not None:
            best_length, best_entry = min(common_prefix_length(entry.keys, state.keys), reusable), entry
        for other in self._by_id.values():
            if other is state or not other.admitted or other.session_id != session_id:
                continue
            length = min(common_prefix_length(other.fed_keys(), state.keys), reusable)
            if length > best_length:
                best_length, best_entry, best_request = length, None, other

        # Checked before touching the store, so a refused request leaves the session's cache as it was.
        for span in state.spans:
            segment = span.segment
            if isinstance(segment, EmbeddingSegment) and segment.rows is None and span.end > best_length:
                raise MissingMediaRows(segment.content_id)

        if best_entry is not None:
            taken = self.store.take(session_id)
            assert taken is best_entry
        state.admitted = True
        state.num_computed = best_length
        state.cached_tokens = best_length
        capacity = min(state.prompt_tokens + state.request.max_new_tokens, self.max_context_tokens)
        return Admission(best_length, capacity, from_entry=best_entry, from_request=best_request)

    # ------------------------------------------------------------------------ what the runner reported

    def prefilled(self, chunk: PrefillChunk) -> None:
        chunk.request.num_computed = chunk.end
        chunk.request.prefilled_tokens += chunk.end - chunk.start

    def start_decoding(self, state: RequestState) -> None:
        """The prompt is in and the first token sampled: the request joins the decode batch."""
        self.waiting.remove(state)
        state.status = Status.RUNNING
        state.first_token_ns = time.perf_counter_ns()
        self.running.append(state)

    def still_running(self, batch: Sequence[RequestState]) -> list[RequestState]:
        """The planned decode batch minus what ended since the plan (a failed or one-token request)."""
        return [state for state in batch if state.status is Status.RUNNING]

    def decoded(self, batch: Sequence[RequestState]) -> None:
        for state in batch:
            state.num_computed += 1
            state.batch_size_max = max(state.batch_size_max, len(batch))

    def finish_reason(self, state: RequestState) -> str | None:
        """Why the request ends after its latest token, if it does."""
        request = state.request
        if state.generated[-1] in request.stop_token_ids:
            return "stop"
        if len(state.generated) >= request.max_new_tokens:
            return "length"
        if state.prompt_tokens + len(state.generated) >= self.max_context_tokens:
            return "length"
        return None
