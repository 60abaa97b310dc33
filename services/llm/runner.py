"""Executes the scheduler's plan on the model: admission's cache, a prefill chunk, a batched decode step.

Everything that touches tensors lives here; what to run and when is the scheduler's business. Model
errors propagate to the engine, which decides which requests they fail.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import torch

from services.llm.model import Qwen2ForCausalLM
from services.llm.requests import MissingMediaRows, TokenSegment
from services.llm.sampling import sample_next_tokens
from services.llm.scheduler import Admission, PrefillChunk, RequestState


class ModelRunner:
    def __init__(self, model: Qwen2ForCausalLM, device: torch.device):
        self.model = model
        self.device = device

    def admit(self, state: RequestState, admission: Admission) -> None:
        """Give the request the cache the scheduler chose, and its sampling generator."""
        reuse, capacity = admission.reuse_tokens, admission.capacity
        if admission.from_entry is not None:
            cache = admission.from_entry.cache
            cache.truncate(reuse)
            cache.reserve(capacity)
        elif admission.from_request is not None:
            source = admission.from_request.cache
            assert source is not None
            cache = source.clone_prefix(reuse, capacity=capacity)
        else:
            cache = self.model.new_cache(capacity)
        state.cache = cache
        if state.request.temperature > 0:
            seed = state.request.seed if state.request.seed is not None else secrets.randbits(63)
            state.generator = torch.Generator(device=self.device).manual_seed(seed)

    def prefill(self, chunk: PrefillChunk) -> torch.Tensor:
        """Run the chunk's prompt positions into the request's cache; logits of its last position."""
        state = chunk.request
        assert state.cache is not None
        return self.model.prefill(self._prompt_rows(state, chunk.start, chunk.end), state.cache)

    def decode(self, batch: Sequence[RequestState]) -> list[int]:
        """Feed each request's latest token; the next token of each."""
        ids = torch.tensor([state.generated[-1] for state in batch], dtype=torch.int64)
        embeds = self.model.embed(ids.to(self.device))
        logits = self.model.decode(embeds, [state.cache for state in batch])  # type: ignore[misc]
        return self.sample(logits, batch)

    def sample(self, logits: torch.Tensor, batch: Sequence[RequestState]) -> list[int]:
        tokens = sample_next_tokens(
            logits,
            [state.generator for state in batch],
            [state.request.temperature for state in batch],
            [state.request.top_p for state in batch],
        )
        return tokens.tolist()  # the one device sync of the step

    def _prompt_rows(self, state: RequestState, start: int, end: int) -> torch.Tensor:
        """Input rows [end - start, hidden] for prompt positions [start, end)."""
        pieces = []
        for span in state.spans:
            lo, hi = max(start, span.start), min(end, span.end)
            if lo >= hi:
                continue
            segment = span.segment
            if isinstance(segment, TokenSegment):
                ids = torch.tensor(segment.ids[lo - span.start : hi - span.start], dtype=torch.int64)
                pieces.append(self.model.embed(ids.to(self.device)))
            else:
                if segment.rows is None:  # admission guarantees rows for every uncached span
                    raise MissingMediaRows(segment.content_id)
                rows = segment.rows[lo - span.start : hi - span.start]
                pieces.append(rows.to(device=self.device, dtype=self.model.dtype))
        return torch.cat(pieces)
