"""Next-token choice from logits: greedy, or seeded temperature + nucleus sampling per row."""

from __future__ import annotations

from collections.abc import Sequence

import torch


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
