"""TTS decoder (docs/MODEL.md#tts): shapes and names, pre-net / prefill attention, decode steps, sampling,
length cap."""

from __future__ import annotations

import math

import pytest
import torch

from services.speech.tts import (
    TTSDecoder,
    banned_sample_ids,
    bos_id,
    eos_id,
    max_codec_tokens_for,
    sample_codec_token,
    sos_id,
    text_frames,
)
from shared.presets import FULL, TINY


def _layer_keys(prefix: str, hidden: int, inter: int) -> dict[str, tuple[int, ...]]:
    keys = {f"{prefix}.self_attn.{p}_proj.weight": (hidden, hidden) for p in "qkvo"}
    keys |= {
        f"{prefix}.mlp.gate_proj.weight": (inter, hidden),
        f"{prefix}.mlp.up_proj.weight": (inter, hidden),
        f"{prefix}.mlp.down_proj.weight": (hidden, inter),
        f"{prefix}.input_layernorm.weight": (hidden,),
        f"{prefix}.post_attention_layernorm.weight": (hidden,),
    }
    return keys


def test_full_size_state_dict_matches_official_decoder_keys() -> None:
    with torch.device("meta"):
        model = TTSDecoder(FULL.tts)
    expected = {"embedding.weight": (1028, 896), "norm.weight": (896,), "out_fnn.weight": (1028, 896)}
    expected["out_fnn.bias"] = (1028,)
    for stack, count in (("layers_pre_nn", 2), ("layers", 4), ("layers_prefix", 4)):
        for index in range(count):
            expected |= _layer_keys(f"{stack}.{index}", 896, 4864)
    actual = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert actual == expected


def _frames(tiny_models, n_tokens: int, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(0, 150000, (n_tokens,), generator=torch.Generator().manual_seed(seed))
    return text_frames(tiny_models.embed_table[ids], TINY.tts.hidden_size)


def test_pre_net_is_bidirectional(tiny_models) -> None:
    frames = _frames(tiny_models, 3)
    changed = frames.clone()
    changed[0, -1] += 1.0
    with torch.inference_mode():
        out, out_changed = tiny_models.tts.pre_net(frames), tiny_models.tts.pre_net(changed)
    assert out.shape == (1, 12, TINY.tts.hidden_size)
    assert (out[0, 0] - out_changed[0, 0]).abs().max() > 1e-4


def test_prefill_is_non_causal(tiny_models) -> None:
    tts = tiny_models.tts
    with torch.inference_mode():
        hidden = tts.pre_net(_frames(tiny_models, 3))
        changed = hidden.clone()
        changed[0, -1] += 1.0
        out, out_changed = tts.prefill_outputs(hidden), tts.prefill_outputs(changed)
    assert out.shape == (1, 13, TINY.tts.hidden_size)  # BOS + 4n frames
    assert (out[0, 0] - out_changed[0, 0]).abs().max() > 1e-4  # BOS position sees the last frame


def _naive_logits(tts: TTSDecoder, prefix: torch.Tensor, inputs: list[int]) -> torch.Tensor:
    """Whole-sequence forward with the training mask: prefix block bidirectional, targets causal."""
    dims = tts.dims
    heads, head_dim = dims.num_heads, dims.hidden_size // dims.num_heads
    x = torch.cat([prefix, tts.embedding(torch.tensor([inputs]))], dim=1)[0]
    length, n_prefix = x.shape[0], prefix.shape[1]
    allowed = torch.zeros(length, length, dtype=torch.bool)
    allowed[:, :n_prefix] = True
    allowed[n_prefix:, n_prefix:] = torch.tril(torch.ones(length - n_prefix, length - n_prefix, dtype=torch.bool))
    allowed[:n_prefix, n_prefix:] = False
    inv_freq = 1.0 / (dims.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.arange(length).float()[:, None] * inv_freq[None, :]

    def rope(t: torch.Tensor) -> torch.Tensor:  # rotate-half: dim i pairs with dim i + head_dim/2
        first, second = t[..., : head_dim // 2], t[..., head_dim // 2 :]
        cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
        return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)

    def rms(t: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return weight * t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + dims.rms_norm_eps)

    for layer in tts.layers:
        h = rms(x, layer.input_layernorm.weight)
        q = rope((h @ layer.self_attn.q_proj.weight.T).view(length, heads, head_dim))
        k = rope((h @ layer.self_attn.k_proj.weight.T).view(length, heads, head_dim))
        v = (h @ layer.self_attn.v_proj.weight.T).view(length, heads, head_dim)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(head_dim)
        weights = scores.masked_fill(~allowed, -math.inf).softmax(-1)
        x = x + torch.einsum("hqk,khd->qhd", weights, v).reshape(length, -1) @ layer.self_attn.o_proj.weight.T
        h = rms(x, layer.post_attention_layernorm.weight)
        mlp = layer.mlp
        x = x + (torch.nn.functional.silu(h @ mlp.gate_proj.weight.T) * (h @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T
    return tts.out_fnn(rms(x, tts.norm.weight))[n_prefix:]


def test_decode_steps_match_whole_sequence_forward(tiny_models) -> None:
    tts = tiny_models.tts
    targets = [5, 900, 17]
    with torch.inference_mode():
        hidden = tts.pre_net(_frames(tiny_models, 2))
        prefix = torch.cat([tts.embedding(torch.tensor([[bos_id(tts.dims)]])), hidden], dim=1)
        expected = _naive_logits(tts, prefix, [sos_id(tts.dims), *targets])
        cache = tts.new_cache(prefix.shape[1] + len(targets) + 1)
        tts.prefill(hidden, cache)
        steps = [tts.decode_step(torch.tensor([tok]), [cache])[0] for tok in [sos_id(tts.dims), *targets]]
    assert cache.length == prefix.shape[1] + len(targets) + 1  # SOS at position 4n+1, then one per token
    assert torch.allclose(torch.stack(steps), expected, atol=1e-5)


def test_decode_step_row_is_independent_of_its_neighbours(tiny_models) -> None:
    """Fixed-shape batch: a stream's logits are bit-identical alone or beside other streams."""
    tts = tiny_models.tts
    slots = 8

    def new_cache(seed: int):
        cache = tts.new_cache(64)
        tts.prefill(tts.pre_net(_frames(tiny_models, 3, seed)), cache)
        return cache

    with torch.inference_mode():
        alone = [None] * slots
        alone[0] = new_cache(1)
        tokens = torch.full((slots,), 1027)
        tokens[0] = 321
        logits_alone = tts.decode_step(tokens, alone)[0]
        crowded = [new_cache(2), new_cache(3), new_cache(4), new_cache(1)] + [None] * (slots - 4)
        tokens = torch.tensor([5, 6, 7, 321] + [1027] * (slots - 4))
        logits_crowded = tts.decode_step(tokens, crowded)[3]
    assert torch.equal(logits_alone, logits_crowded)


def test_sampling_keeps_top2_renormalised_and_is_seeded() -> None:
    logits = torch.full((1028,), -10.0)
    logits[7], logits[9] = 2.0, 1.0  # p(7) / (p(7) + p(9)) = e / (e + 1)
    banned = banned_sample_ids(TINY.tts)
    draws = [sample_codec_token(logits, gen, banned) for gen in [torch.Generator().manual_seed(0)] for _ in range(4000)]
    assert set(draws) == {7, 9}
    share = draws.count(7) / len(draws)
    assert abs(share - math.e / (math.e + 1)) < 0.03

    def run(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return [sample_codec_token(torch.randn(1028, generator=torch.Generator().manual_seed(i)), gen, banned) for i in range(50)]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_sampling_draws_once_per_step_like_the_reference() -> None:
    """Same generator consumption as the reference's single torch.multinomial(probs, 1) per step."""
    banned = banned_sample_ids(TINY.tts)
    ours, reference = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for step in range(30):
        logits = torch.randn(1028, generator=torch.Generator().manual_seed(100 + step))
        probs = torch.softmax(logits, -1)
        top_p, top_i = torch.topk(probs, 2)
        kept = torch.zeros_like(probs).scatter_(0, top_i, top_p)
        expected = int(torch.multinomial(kept / kept.sum(), 1, generator=reference))
        assert sample_codec_token(logits, ours, banned) == expected


def test_sampling_never_returns_bos_sos_or_pad() -> None:
    dims = TINY.tts
    logits = torch.zeros(1028)
    logits[[bos_id(dims), sos_id(dims), 1027]] = 50.0  # the specials dominate
    logits[eos_id(dims)] = 1.0
    logits[3] = 0.5
    gen = torch.Generator().manual_seed(0)
    draws = {sample_codec_token(logits, gen, banned_sample_ids(dims)) for _ in range(200)}
    assert draws == {eos_id(dims), 3}


@pytest.mark.parametrize(("text_tokens", "cap"), [(1, 65), (10, 290), (38, 990), (39, 1000), (200, 1000)])
def test_length_cap_grows_with_the_text(text_tokens: int, cap: int) -> None:
    assert max_codec_tokens_for(text_tokens, per_text_token=25, base_tokens=40, hard_cap=1000) == cap
