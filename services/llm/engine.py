"""Continuous-batching generation over `Qwen2ForCausalLM`, on one background worker thread.

The gRPC event loop only calls `submit` / `cancel` / `release_session` / `stats`, which validate and
enqueue; every model step runs on the engine thread (torch releases the GIL while it computes), and
events go back through the caller's `on_event`, which is called on the engine thread.

One loop iteration = apply queued commands (submits, cancels, releases: this is the step boundary), then at
most ONE prefill chunk of the request at the head of the waiting queue, then ONE batched decode step over
every running request. A long prompt is thus spread over several iterations and never stalls running
decodes by more than one chunk; requests join and leave the batch between steps.

Session KV caches are kept across turns in an LRU. Each entry remembers the "key" of every position it
holds (a token id, or `(content_id, row)` for a spliced embedding row), so a new turn reuses the longest
common prefix and prefills only the rest.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from services.llm.model import KVCache, Qwen2ForCausalLM

logger = logging.getLogger(__name__)

DEFAULT_KV_CACHE_MAX_TOKENS = 262_144  # idle session positions kept; ~14.7 GB in bf16 at full dims


# ----------------------------------------------------------------------------------------------- API types


@dataclass(frozen=True)
class TokenSegment:
    ids: tuple[int, ...]


@dataclass(frozen=True)
class EmbeddingSegment:
    """Rows spliced into the prompt (image tiles, audio). `content_id` names the content: two segments with
    the same id and row index are taken to hold the same row, which is what lets a later turn send
    `rows=None` for media already in the session's cache."""

    content_id: str
    rows: torch.Tensor | None  # [num_rows, hidden]
    num_rows: int


Segment = TokenSegment | EmbeddingSegment


@dataclass
class GenerationRequest:
    request_id: str
    session_id: str
    segments: list[Segment]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    token_id: int


@dataclass(frozen=True)
class FinishedEvent:
    reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    cached_tokens: int  # prompt positions reused from the session cache
    prefilled_tokens: int  # prompt positions run through the model by this request
    generated_tokens: int
    queue_ns: int  # submit -> start of the first prefill chunk
    prefill_ns: int  # first prefill chunk -> first token
    decode_ns: int  # first token -> finish
    batch_size_max: int  # largest decode batch this request was part of


@dataclass(frozen=True)
class FailedEvent:
    error: Exception


Event = TokenEvent | FinishedEvent | FailedEvent
EventCallback = Callable[[Event], None]


class InvalidRequest(ValueError):
    """The request itself is wrong (maps to INVALID_ARGUMENT)."""


class ContextTooLong(InvalidRequest):
    pass


class MissingMediaRows(ValueError):
    """An embedding span came without rows and is not in the session cache: resend it with rows."""

    def __init__(self, content_id: str):
        super().__init__(f"embedding rows for content_id {content_id!r} are not cached; send the rows")
        self.content_id = content_id


class EngineStopped(RuntimeError):
    """The engine is not running (maps to UNAVAILABLE)."""


class GenerationFailed(RuntimeError):
    """Model compute failed; the cause is chained (`__cause__`) for logs, the message is safe to show."""


@dataclass(frozen=True)
class EngineStats:
    running: int = 0
    waiting: int = 0  # submitted, not yet decoding (includes a request being prefilled)
    cached_sessions: int = 0  # idle session caches
    cached_tokens: int = 0  # positions held by idle session caches
    steps: int = 0  # batched decode steps
    prefill_chunks: int = 0
    decode_tokens_total: int = 0
    prefill_tokens_total: int = 0
    reused_tokens_total: int = 0  # prompt positions served from a cache instead of prefilled
    finished_total: int = 0  # stop, length or cancelled
    cancelled_total: int = 0
    failed_total: int = 0
    evicted_sessions_total: int = 0
    kv_cache_bytes: int = 0  # allocated by idle and active caches


# ----------------------------------------------------------------------------------- session cache (LRU)

# Identity of one prompt position: a token id, or (content_id, row index) for a spliced embedding row.
Key = int | tuple[str, int]


def common_prefix_length(a: Sequence[Key], b: Sequence[Key]) -> int:
    limit = min(len(a), len(b))
    index = 0
    while index < limit and a[index] == b[index]:
        index += 1
    return index


@dataclass
class _CacheEntry:
    cache: KVCache
    keys: list[Key]  # one per valid cache position


class SessionCacheStore:
    """Idle session caches, least recently used first, bounded by sessions and by positions held
    (allocated memory is at most one KV block per session above that, see `KVCache.shrink_to_fit`).

    A request that reuses an entry takes it out (`take`) and puts its own back when it ends, so an entry
    in use can never be evicted or handed to a second request.
    """

    def __init__(self, *, max_sessions: int, max_tokens: int):
        self.max_sessions = max_sessions
        self.max_tokens = max_tokens
        self._entries: OrderedDict[str, _CacheEntry] = OrderedDict()
        self.tokens = 0
        self.evicted_total = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(entry.cache.nbytes for entry in self._entries.values())

    def peek(self, session_id: str) -> _CacheEntry | None:
        return self._entries.get(session_id)

    def take(self, session_id: str) -> _CacheEntry | None:
        entry = self._entries.pop(session_id, None)
        if entry is not None:
            self.tokens -= entry.cache.length
        return entry

    def put(self, session_id: str, entry: _CacheEntry) -> None:
        """Store as most recent (replacing an older entry of the session), then evict to the bounds."""
        self.take(session_id)
        entry.cache.shrink_to_fit()
        self._entries[session_id] = entry
        self.tokens += entry.cache.length
        while self._entries and (len(self._entries) > self.max_sessions or self.tokens > self.max_tokens):
            _, evicted = self._entries.popitem(last=False)
            self.tokens -= evicted.cache.length
            self.evicted_total += 1

    def clear(self) -> None:
        self._entries.clear()
        self.tokens = 0


# ------------------------------------------------------------------------------------------------ sampling


def sample_next_tokens(logits: torch.Tensor, generators: Sequence[torch.Generator | None],
                       temperatures: Sequence[float], top_ps: Sequence[float]) -> torch.Tensor:
    """Next token per row of logits [B, vocab]: greedy where the generator is None, else temperature +
    nucleus sampling. Sampling uses the exponential-race trick (argmax of p / Exp(1) draws a token with
    probability p) so nothing waits on the device; the caller syncs once for the whole batch."""
    tokens = logits.argmax(dim=-1)
    for row, generator in enumerate(generators):
        if generator is None:
            continue
        probs = torch.softmax(logits[row].float() / temperatures[row], dim=-1)
        if top_ps[row] < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
            outside = sorted_probs.cumsum(-1) - sorted_probs >= top_ps[row]
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs.masked_fill(outside, 0.0))
        race = torch.empty_like(probs).exponential_(generator=generator)
        tokens[row] = (probs / race).argmax()
    return tokens


# ----------------------------------------------------------------------------------------- request state


@dataclass
class _Span:
    start: int  # first prompt position of the segment
    segment: Segment

    @property
    def end(self) -> int:
        seg = self.segment
        return self.start + (len(seg.ids) if isinstance(seg, TokenSegment) else seg.num_rows)


@dataclass(eq=False)
class _Active:
    """A submitted request, owned by the engine thread."""

    request: GenerationRequest
    on_event: EventCallback
    keys: list[Key]  # prompt keys
    spans: list[_Span]
    submitted_ns: int
    generator: torch.Generator | None = None
    cache: KVCache | None = None  # None until admitted
    cached_tokens: int = 0
    prefilled_tokens: int = 0
    generated: list[int] = field(default_factory=list)
    admitted_ns: int = 0
    first_token_ns: int = 0
    batch_size_max: int = 0
    keep_cache: bool = True  # False after release_session: the session's state must not come back

    @property
    def prompt_tokens(self) -> int:
        return len(self.keys)

    def fed_keys(self) -> list[Key]:
        """Keys of the positions in the cache: the prompt, then generated tokens that were fed back."""
        assert self.cache is not None
        return (self.keys + self.generated)[: self.cache.length]


def _prompt_layout(segments: Sequence[Segment]) -> tuple[list[Key], list[_Span]]:
    keys: list[Key] = []
    spans: list[_Span] = []
    for segment in segments:
        spans.append(_Span(len(keys), segment))
        if isinstance(segment, TokenSegment):
            keys.extend(segment.ids)
        else:
            keys.extend((segment.content_id, row) for row in range(segment.num_rows))
    return keys, spans


# ------------------------------------------------------------------------------------------------- engine


class LLMEngine:
    def __init__(
        self,
        model: Qwen2ForCausalLM,
        *,
        device: str | torch.device,
        max_batch_size: int = 16,
        prefill_chunk_tokens: int = 256,
        max_context_tokens: int,
        kv_cache_max_sessions: int = 64,
        kv_cache_max_tokens: int = DEFAULT_KV_CACHE_MAX_TOKENS,
    ):
        if max_context_tokens > model.dims.max_position_embeddings:
            raise ValueError(
                f"max_context_tokens {max_context_tokens} exceeds the model's "
                f"{model.dims.max_position_embeddings} positions"
            )
        for name, value in (("max_batch_size", max_batch_size), ("prefill_chunk_tokens", prefill_chunk_tokens),
                            ("max_context_tokens", max_context_tokens)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.model = model
        self.device = torch.device(device)
        if self.device.type != model.device.type:
            raise ValueError(f"engine device {self.device} but the model is on {model.device}")
        self.max_batch_size = max_batch_size
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.max_context_tokens = max_context_tokens
        self._hidden = model.dims.hidden_size
        self._vocab = model.dims.vocab_size

        # Shared with caller threads, guarded by _lock.
        self._lock = threading.Condition()
        self._inbox: list[tuple[str, object]] = []
        self._live_ids: set[str] = set()
        self._accepting = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._published = EngineStats()

        # Engine-thread state.
        self._store = SessionCacheStore(max_sessions=kv_cache_max_sessions, max_tokens=kv_cache_max_tokens)
        self._waiting: deque[_Active] = deque()
        self._running: list[_Active] = []
        self._by_id: dict[str, _Active] = {}
        self._counters = dict.fromkeys(
            ("steps", "prefill_chunks", "decode_tokens_total", "prefill_tokens_total", "reused_tokens_total",
             "finished_total", "cancelled_total", "failed_total"), 0)

    # ---------------------------------------------------------------------------- caller-thread interface

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("engine already started")
            self._accepting = True
            self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the worker; requests still in flight get FailedEvent(EngineStopped)."""
        with self._lock:
            self._accepting = False
            self._stopping = True
            self._lock.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def submit(self, request: GenerationRequest, on_event: EventCallback) -> None:
        """Validate and enqueue. Raises InvalidRequest / ContextTooLong for a bad request, EngineStopped
        when not running; everything later arrives through `on_event`, called on the engine thread: it must
        only hand the event over (e.g. `loop.call_soon_threadsafe`), since it delays every running request."""
        self._validate(request)
        keys, spans = _prompt_layout(request.segments)
        active = _Active(request=request, on_event=on_event, keys=keys, spans=spans,
                         submitted_ns=time.perf_counter_ns())
        with self._lock:
            if not self._accepting:
                raise EngineStopped("the LLM engine is not running")
            if request.request_id in self._live_ids:
                raise InvalidRequest(f"request_id {request.request_id!r} is already in flight")
            self._live_ids.add(request.request_id)
            self._inbox.append(("submit", active))
            self._lock.notify()

    def cancel(self, request_id: str) -> None:
        """Takes effect at the next step boundary; unknown or finished ids are ignored."""
        self._command("cancel", request_id)

    def release_session(self, session_id: str) -> None:
        """Drop the session's cached KV; a request of the session still running will not store its own."""
        self._command("release", session_id)

    def stats(self) -> EngineStats:
        with self._lock:
            published = self._published
            # Submits still in the inbox count as waiting.
            in_flight = len(self._live_ids)
        return replace(published, waiting=max(published.waiting, in_flight - published.running))

    def _command(self, kind: str, argument: str) -> None:
        with self._lock:
            self._inbox.append((kind, argument))
            self._lock.notify()

    def _validate(self, request: GenerationRequest) -> None:
        if not request.request_id or not request.session_id:
            raise InvalidRequest("request_id and session_id are required")
        if request.max_new_tokens <= 0:
            raise InvalidRequest(f"max_new_tokens must be positive, got {request.max_new_tokens}")
        if request.temperature < 0:
            raise InvalidRequest(f"temperature must be >= 0, got {request.temperature}")
        if not 0 < request.top_p <= 1:
            raise InvalidRequest(f"top_p must be in (0, 1], got {request.top_p}")
        prompt_tokens = 0
        for segment in request.segments:
            if isinstance(segment, TokenSegment):
                bad = [i for i in segment.ids if not (isinstance(i, int) and 0 <= i < self._vocab)]
                if bad:
                    raise InvalidRequest(f"token id {bad[0]!r} is not an int in the vocabulary [0, {self._vocab})")
                prompt_tokens += len(segment.ids)
            elif isinstance(segment, EmbeddingSegment):
                self._validate_embedding(segment)
                prompt_tokens += segment.num_rows
            else:
                raise InvalidRequest(f"unknown segment type {type(segment).__name__}")
        if prompt_tokens == 0:
            raise InvalidRequest("the prompt is empty")
        # The prompt must leave room for at least one generated token.
        if prompt_tokens >= self.max_context_tokens:
            raise ContextTooLong(
                f"prompt of {prompt_tokens} tokens leaves no room in the {self.max_context_tokens}-token context"
            )

    def _validate_embedding(self, segment: EmbeddingSegment) -> None:
        if not segment.content_id:
            raise InvalidRequest("an embedding segment needs a content_id")
        if segment.num_rows <= 0:
            raise InvalidRequest(f"embedding segment {segment.content_id!r} has {segment.num_rows} rows")
        rows = segment.rows
        if rows is None:
            return
        if tuple(rows.shape) != (segment.num_rows, self._hidden):
            raise InvalidRequest(
                f"embedding segment {segment.content_id!r}: rows of shape {tuple(rows.shape)}, "
                f"expected ({segment.num_rows}, {self._hidden})"
            )
        if not rows.is_floating_point():
            raise InvalidRequest(f"embedding segment {segment.content_id!r}: rows must be floating point")

    # -------------------------------------------------------------------------------------- engine thread

    def _run(self) -> None:
        with torch.inference_mode():
            while self._apply_commands():
                self._prefill_one_chunk()
                self._decode_step()
                self._publish_stats()
            self._shutdown()

    def _apply_commands(self) -> bool:
        """The step boundary: take every queued command; sleep while there is nothing to do.
        Returns False when the engine must stop."""
        with self._lock:
            while not self._inbox and not self._stopping and not (self._waiting or self._running):
                self._lock.wait()
            if self._stopping:
                return False
            commands, self._inbox = self._inbox, []
        for kind, argument in commands:
            if kind == "submit":
                assert isinstance(argument, _Active)
                self._waiting.append(argument)
                self._by_id[argument.request.request_id] = argument
            elif kind == "cancel":
                active = self._by_id.get(str(argument))
                if active is not None:
                    self._counters["cancelled_total"] += 1
                    self._finish(active, "cancelled")
            elif kind == "release":
                self._store.take(str(argument))
                for active in self._by_id.values():
                    if active.request.session_id == argument:
                        active.keep_cache = False
        return True

    # Prefill ---------------------------------------------------------------------------------------------

    def _prefill_one_chunk(self) -> None:
        if not self._waiting or len(self._running) >= self.max_batch_size:
            return
        active = self._waiting[0]
        try:
            if active.cache is None:
                self._admit(active)
            cache = active.cache
            assert cache is not None
            start = cache.length
            end = min(active.prompt_tokens, start + self.prefill_chunk_tokens)
            logits = self.model.prefill(self._prompt_rows(active, start, end), cache)
            self._counters["prefill_chunks"] += 1
            self._counters["prefill_tokens_total"] += end - start
            active.prefilled_tokens += end - start
            if end < active.prompt_tokens:
                return
            token = self._sample(logits[None], [active])[0]
        except MissingMediaRows as error:
            self._fail(active, error)
            return
        except Exception as error:  # noqa: BLE001 - any model failure fails this request, not the engine
            logger.exception("prefill failed for request %s", active.request.request_id)
            self._fail(active, GenerationFailed("the model failed while reading the prompt"), cause=error)
            return
        self._waiting.popleft()
        active.first_token_ns = time.perf_counter_ns()
        self._running.append(active)
        self._accept_token(active, token)

    def _admit(self, active: _Active) -> None:
        """Pick the cache this request continues: the longest common prefix among the session's idle entry
        and the caches of other live requests of the same session (copied, never shared)."""
        active.admitted_ns = time.perf_counter_ns()
        session_id = active.request.session_id
        # The last prompt position is always fed: its logits give the first token.
        reusable = active.prompt_tokens - 1
        best_length, best_source = 0, None
        entry = self._store.peek(session_id)
        if entry is not None:
            best_length, best_source = min(common_prefix_length(entry.keys, active.keys), reusable), entry
        for other in self._by_id.values():
            if other is active or other.cache is None or other.request.session_id != session_id:
                continue
            length = min(common_prefix_length(other.fed_keys(), active.keys), reusable)
            if length > best_length:
                best_length, best_source = length, other

        # Checked before touching the store, so a failed request leaves the session's cache as it was.
        for span in active.spans:
            segment = span.segment
            if isinstance(segment, EmbeddingSegment) and segment.rows is None and span.end > best_length:
                raise MissingMediaRows(segment.content_id)

        capacity = min(active.prompt_tokens + active.request.max_new_tokens, self.max_context_tokens)
        if isinstance(best_source, _CacheEntry):
            taken = self._store.take(session_id)
            assert taken is best_source
            cache = taken.cache
            cache.truncate(best_length)
            cache.reserve(capacity)
        elif isinstance(best_source, _Active):
            assert best_source.cache is not None
            cache = best_source.cache.clone_prefix(best_length, capacity=capacity)
        else:
            cache = self.model.new_cache(capacity)
        active.cache = cache
        active.cached_tokens = best_length
        self._counters["reused_tokens_total"] += best_length
        if active.request.temperature > 0:
            seed = active.request.seed if active.request.seed is not None else secrets.randbits(63)
            active.generator = torch.Generator(device=self.device).manual_seed(seed)

    def _prompt_rows(self, active: _Active, start: int, end: int) -> torch.Tensor:
        """Input rows [end - start, hidden] for prompt positions [start, end)."""
        pieces = []
        for span in active.spans:
            lo, hi = max(start, span.start), min(end, span.end)
            if lo >= hi:
                continue
            segment = span.segment
            if isinstance(segment, TokenSegment):
                ids = torch.tensor(segment.ids[lo - span.start : hi - span.start], dtype=torch.int64)
                pieces.append(self.model.embed(ids.to(self.device)))
            else:
                if segment.rows is None:  # _admit guarantees rows for every uncached span
                    raise MissingMediaRows(segment.content_id)
                rows = segment.rows[lo - span.start : hi - span.start]
                pieces.append(rows.to(device=self.device, dtype=self.model.dtype))
        return torch.cat(pieces)

    # Decode ----------------------------------------------------------------------------------------------

    def _decode_step(self) -> None:
        if not self._running:
            return
        batch = list(self._running)
        try:
            ids = torch.tensor([active.generated[-1] for active in batch], dtype=torch.int64)
            embeds = self.model.embed(ids.to(self.device))
            logits = self.model.decode(embeds, [active.cache for active in batch])  # type: ignore[misc]
            tokens = self._sample(logits, batch)
        except Exception as error:  # noqa: BLE001 - a failed step fails its batch, not the engine
            logger.exception("decode step failed for a batch of %d", len(batch))
            for active in batch:
                self._fail(active, GenerationFailed("the model failed while generating"), cause=error)
            return
        self._counters["steps"] += 1
        self._counters["decode_tokens_total"] += len(batch)
        for active, token in zip(batch, tokens):
            active.batch_size_max = max(active.batch_size_max, len(batch))
            self._accept_token(active, token)

    def _sample(self, logits: torch.Tensor, batch: Sequence[_Active]) -> list[int]:
        tokens = sample_next_tokens(
            logits,
            [active.generator for active in batch],
            [active.request.temperature for active in batch],
            [active.request.top_p for active in batch],
        )
        return tokens.tolist()  # the one device sync of the step

    def _accept_token(self, active: _Active, token: int) -> None:
        active.generated.append(token)
        if not self._emit(active, TokenEvent(token)):
            return
        request = active.request
        if token in request.stop_token_ids:
            self._finish(active, "stop")
        elif len(active.generated) >= request.max_new_tokens:
            self._finish(active, "length")
        elif active.prompt_tokens + len(active.generated) >= self.max_context_tokens:
            self._finish(active, "length")

    # Endings ---------------------------------------------------------------------------------------------

    def _detach(self, active: _Active) -> None:
        self._by_id.pop(active.request.request_id, None)
        if active in self._running:
            self._running.remove(active)
        elif active in self._waiting:
            self._waiting.remove(active)
        with self._lock:
            self._live_ids.discard(active.request.request_id)

    def _finish(self, active: _Active, reason: str) -> None:
        """End normally or by cancel. The cache holds exactly the fed keys at a step boundary, so it is
        stored for the session either way (after a cancel: the part computed so far)."""
        self._detach(active)
        if active.cache is not None and active.keep_cache:
            self._store.put(active.request.session_id, _CacheEntry(active.cache, active.fed_keys()))
        self._counters["finished_total"] += 1
        self._publish_stats()
        now = time.perf_counter_ns()
        admitted = active.admitted_ns or now
        first_token = active.first_token_ns or now
        self._emit(active, FinishedEvent(
            reason=reason,
            prompt_tokens=active.prompt_tokens,
            cached_tokens=active.cached_tokens,
            prefilled_tokens=active.prefilled_tokens,
            generated_tokens=len(active.generated),
            queue_ns=admitted - active.submitted_ns,
            prefill_ns=first_token - admitted,
            decode_ns=now - first_token,
            batch_size_max=active.batch_size_max,
        ), final=True)

    def _fail(self, active: _Active, error: Exception, *, cause: Exception | None = None) -> None:
        """A failed request's cache may be half written: it is dropped, never stored."""
        if cause is not None:
            error.__cause__ = cause
        self._detach(active)
        self._counters["failed_total"] += 1
        self._publish_stats()
        self._emit(active, FailedEvent(error), final=True)

    def _emit(self, active: _Active, event: Event, *, final: bool = False) -> bool:
        """Deliver an event; a callback that raises has lost its consumer, so its request is cancelled.
        Returns whether the request is still live."""
        try:
            active.on_event(event)
        except Exception:  # noqa: BLE001 - a broken consumer must not take the engine down
            logger.exception("on_event raised for request %s", active.request.request_id)
            if not final:
                self._counters["cancelled_total"] += 1
                self._finish(active, "cancelled")
                return False
        return not final

    def _shutdown(self) -> None:
        with self._lock:
            commands, self._inbox = self._inbox, []
        pending = [argument for kind, argument in commands if kind == "submit"]
        for active in [*self._running, *self._waiting, *pending]:
            assert isinstance(active, _Active)
            self._fail(active, EngineStopped("the LLM engine stopped"))
        self._store.clear()
        self._publish_stats()

    def _publish_stats(self) -> None:
        active_bytes = sum(a.cache.nbytes for a in self._by_id.values() if a.cache is not None)
        stats = EngineStats(
            running=len(self._running),
            waiting=len(self._waiting),
            cached_sessions=len(self._store),
            cached_tokens=self._store.tokens,
            evicted_sessions_total=self._store.evicted_total,
            kv_cache_bytes=self._store.nbytes + active_bytes,
            **self._counters,
        )
        with self._lock:
            self._published = stats
