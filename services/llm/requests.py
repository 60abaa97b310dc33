"""What callers hand the LLM engine and what they get back: requests, events, errors, stats, validation.

Torch-free: embedding rows are typed as tensors but only duck-typed here (`shape`, `is_floating_point`),
so the scheduler and its tests can import these types without paying for torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shared.engine_loop import EngineStoppedError, LoopStats

if TYPE_CHECKING:
    import torch


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


class EngineBusy(RuntimeError):
    """Admission control: as many requests as the engine may hold are already in flight (maps to
    RESOURCE_EXHAUSTED, with `retry_after_ms` as the hint)."""

    def __init__(self, in_flight: int, retry_after_ms: int):
        super().__init__(f"the LLM service is at capacity ({in_flight} requests in flight); retry in {retry_after_ms} ms")
        self.in_flight = in_flight
        self.retry_after_ms = retry_after_ms


class EngineStopped(EngineStoppedError):
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
    loop: LoopStats = field(default_factory=LoopStats)  # the engine thread: iterations, commands, busy time


def validate_request(request: GenerationRequest, *, vocab_size: int, hidden_size: int,
                     max_context_tokens: int) -> None:
    """Raises InvalidRequest / ContextTooLong; runs on the caller's thread, before anything is queued."""
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
            bad = [i for i in segment.ids if not (isinstance(i, int) and 0 <= i < vocab_size)]
            if bad:
                raise InvalidRequest(f"token id {bad[0]!r} is not an int in the vocabulary [0, {vocab_size})")
            prompt_tokens += len(segment.ids)
        elif isinstance(segment, EmbeddingSegment):
            _validate_embedding(segment, hidden_size)
            prompt_tokens += segment.num_rows
        else:
            raise InvalidRequest(f"unknown segment type {type(segment).__name__}")
    if prompt_tokens == 0:
        raise InvalidRequest("the prompt is empty")
    # The prompt must leave room for at least one generated token.
    if prompt_tokens >= max_context_tokens:
        raise ContextTooLong(
            f"prompt of {prompt_tokens} tokens leaves no room in the {max_context_tokens}-token context"
        )


def _validate_embedding(segment: EmbeddingSegment, hidden_size: int) -> None:
    if not segment.content_id:
        raise InvalidRequest("an embedding segment needs a content_id")
    if segment.num_rows <= 0:
        raise InvalidRequest(f"embedding segment {segment.content_id!r} has {segment.num_rows} rows")
    rows = segment.rows
    if rows is None:
        return
    if tuple(rows.shape) != (segment.num_rows, hidden_size):
        raise InvalidRequest(
            f"embedding segment {segment.content_id!r}: rows of shape {tuple(rows.shape)}, "
            f"expected ({segment.num_rows}, {hidden_size})"
        )
    if not rows.is_floating_point():
        raise InvalidRequest(f"embedding segment {segment.content_id!r}: rows must be floating point")
