"""Whale encoder + adapter (docs/MODEL.md#audio-encoder, #audio-adapter) at tiny width, and the seeded loader."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from services.audio.encoder import (
    Conv2dSubsampling4,
    RelPositionAttention,
    WhaleAudioEncoder,
    num_encoder_frames,
    num_llm_tokens,
)
from services.audio.encoding import PartialEncoding
from services.audio.features import AudioInputError, AudioTooShortError, compute_fbank, num_fbank_frames
from services.audio.weights import load_audio_encoder
from shared.checkpoint import CheckpointError
from shared.presets import FULL, TINY

from .conftest import SEED, noise

# docs/MODEL.md#audio-adapter table: speech seconds → N, T, T1, L.
SPEC_LENGTH_CHAIN = [
    (0.5, 8000, 48, 11, 6),
    (1.0, 16000, 98, 23, 12),
    (4.0, 64000, 398, 98, 49),
    (10.0, 160000, 998, 248, 124),
    (30.0, 480000, 2998, 748, 374),
]


@pytest.mark.parametrize(("seconds", "n", "t", "t1", "llm_tokens"), SPEC_LENGTH_CHAIN)
def test_length_chain_of_the_real_modules_matches_the_spec_table(tiny_encoder, seconds, n, t, t1, llm_tokens):
    samples = noise(seconds, 0.1)
    assert len(samples) == n
    feats = torch.from_numpy(compute_fbank(samples)).unsqueeze(0)
    assert feats.shape == (1, t, 80) and num_fbank_frames(n) == t
    with torch.inference_mode():
        rows = tiny_encoder.subsample(feats)
        embeddings, counts = tiny_encoder(feats)
    assert rows.shape == (1, t1, TINY.audio.attention_dim) and num_encoder_frames(t) == t1
    assert embeddings.shape == (1, llm_tokens, TINY.audio.llm_hidden) and counts.tolist() == [llm_tokens]
    assert num_llm_tokens(t1) == llm_tokens
    assert torch.isfinite(embeddings).all()


@pytest.mark.parametrize("n", [1360, 1520, 6401, 12345])
def test_length_rules_equal_module_shapes_off_the_table(tiny_encoder, n):
    feats = torch.from_numpy(compute_fbank(noise(n / 16000, 0.1))).unsqueeze(0)
    with torch.inference_mode():
        embeddings, _ = tiny_encoder(feats)
    assert embeddings.size(1) == num_llm_tokens(num_encoder_frames(num_fbank_frames(n)))


def test_fewer_than_seven_frames_is_a_clear_error(tiny_encoder):
    feats = torch.from_numpy(compute_fbank(noise(1359 / 16000, 0.1))).unsqueeze(0)
    assert feats.size(1) == 6
    with pytest.raises(AudioTooShortError, match="at least 7"), torch.inference_mode():
        tiny_encoder(feats)


def test_clip_beyond_the_position_table_is_rejected(tiny_encoder):
    rows = torch.zeros(1, TINY.audio.pos_table_size + 1, TINY.audio.attention_dim)
    with pytest.raises(AudioInputError, match="too long"), torch.inference_mode():
        tiny_encoder.encode_subsampled(rows)


def expected_full_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """The official audio tensor names and shapes at VITA-1.5 size."""
    shapes: dict[str, tuple[int, ...]] = {
        "encoder.global_cmvn.mean": (80,),
        "encoder.global_cmvn.istd": (80,),
        "encoder.enc.0.core.conv.0.weight": (1024, 1, 3, 3),
        "encoder.enc.0.core.conv.0.bias": (1024,),
        "encoder.enc.0.core.conv.2.weight": (1024, 1024, 3, 3),
        "encoder.enc.0.core.conv.2.bias": (1024,),
        "encoder.enc.0.core.out.0.weight": (1024, 19456),
        "encoder.enc.0.core.out.0.bias": (1024,),
        "encoder.enc.1.embed.0.weight": (1024, 1024),
        "encoder.enc.1.embed.0.bias": (1024,),
        "encoder.enc.1.embed.1.weight": (1024,),
        "encoder.enc.1.embed.1.bias": (1024,),
        "encoder.enc.1.after_norm.weight": (1024,),
        "encoder.enc.1.after_norm.bias": (1024,),
        "adpter.conv1d2.weight": (2048, 1024, 5),
        "adpter.conv1d2.bias": (2048,),
        "adpter.bn2.weight": (2048,),
        "adpter.bn2.bias": (2048,),
        "adpter.project.weight": (3584, 2048),
        "adpter.project.bias": (3584,),
    }
    for i in range(24):
        layer = f"encoder.enc.1.encoders.{i}."
        for name in ("linear_q", "linear_k", "linear_v", "linear_out"):
            shapes[f"{layer}self_attn.{name}.weight"] = (1024, 1024)
            shapes[f"{layer}self_attn.{name}.bias"] = (1024,)
        shapes[f"{layer}self_attn.linear_pos.weight"] = (1024, 1024)
        shapes[f"{layer}self_attn.pos_bias_u"] = (16, 64)
        shapes[f"{layer}self_attn.pos_bias_v"] = (16, 64)
        shapes[f"{layer}feed_forward.w_1.weight"] = (4096, 1024)
        shapes[f"{layer}feed_forward.w_1.bias"] = (4096,)
        shapes[f"{layer}feed_forward.w_2.weight"] = (1024, 4096)
        shapes[f"{layer}feed_forward.w_2.bias"] = (1024,)
        for norm in ("norm1", "norm2"):
            shapes[f"{layer}{norm}.weight"] = (1024,)
            shapes[f"{layer}{norm}.bias"] = (1024,)
    return shapes


def test_state_dict_names_and_shapes_match_the_official_checkpoint():
    with torch.device("meta"):
        model = WhaleAudioEncoder(FULL.audio)
    actual = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert actual == expected_full_state_dict_shapes()


def test_cmvn_is_applied_exactly_once(tiny_encoder):
    feats = torch.from_numpy(compute_fbank(noise(1.0, 0.1))).unsqueeze(0)
    cmvn = tiny_encoder.encoder.global_cmvn
    normalised = (feats - cmvn.mean) * cmvn.istd
    identity = copy.deepcopy(tiny_encoder)
    identity.encoder.global_cmvn.mean.zero_()
    identity.encoder.global_cmvn.istd.fill_(1.0)
    with torch.inference_mode():
        torch.testing.assert_close(tiny_encoder(feats)[0], identity(normalised)[0], rtol=0, atol=1e-6)
        assert not torch.allclose(tiny_encoder(feats)[0], identity(feats)[0], atol=1e-3)


def test_subsampling_flattens_channel_major():
    torch.manual_seed(0)
    sub = Conv2dSubsampling4(num_bins=80, dim=4)
    feats = torch.randn(1, 11, 80)
    with torch.inference_mode():
        conv = sub.conv(feats.unsqueeze(1))[0]  # [c, T1, F']
        rows = torch.stack([conv[:, t, :].reshape(-1) for t in range(conv.size(1))])  # index c·F' + f
        torch.testing.assert_close(sub(feats)[0], sub.out(rows))


def naive_rel_attention(attn: RelPositionAttention, x: np.ndarray, valid: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """docs/MODEL.md#audio-encoder attention written out with loops in float64."""
    params = {name: p.detach().double().numpy() for name, p in attn.named_parameters()}
    q = x @ params["linear_q.weight"].T + params["linear_q.bias"]
    k = x @ params["linear_k.weight"].T + params["linear_k.bias"]
    v = x @ params["linear_v.weight"].T + params["linear_v.bias"]
    p = pos @ params["linear_pos.weight"].T
    heads, dk = attn.num_heads, attn.head_dim
    batch, frames, _ = x.shape
    out = np.zeros_like(x)
    for b in range(batch):
        for h in range(heads):
            cols = slice(h * dk, (h + 1) * dk)
            for t in range(frames):
                scores = np.array(
                    [
                        ((q[b, t, cols] + params["pos_bias_u"][h]) @ k[b, s, cols]
                         + (q[b, t, cols] + params["pos_bias_v"][h]) @ p[s, cols]) / math.sqrt(dk)
                        for s in range(frames)
                    ]
                )
                scores = np.where(valid[b], scores, -np.inf)
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                out[b, t, cols] = weights @ v[b, :, cols]
    return out @ params["linear_out.weight"].T + params["linear_out.bias"]


def test_rel_enc_attention_matches_the_formula_with_padding():
    torch.manual_seed(1)
    attn = RelPositionAttention(dim=8, num_heads=2)
    for param in attn.parameters():
        torch.nn.init.normal_(param, std=0.5)
    x = torch.randn(2, 5, 8)
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    pos = torch.randn(1, 5, 8)
    with torch.inference_mode():
        got = attn(x, valid, pos).double().numpy()
    want = naive_rel_attention(attn, x.double().numpy(), valid.numpy(), pos[0].double().numpy())
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    np.testing.assert_allclose(got[1, :3], want[1, :3], atol=1e-5)  # padded query rows are never used


def test_attention_is_full_context(tiny_encoder):
    feats = torch.from_numpy(compute_fbank(noise(2.0, 0.1))).unsqueeze(0)
    changed = feats.clone()
    changed[0, -20:] += 3.0  # only the last 200 ms
    with torch.inference_mode():
        first, _ = tiny_encoder(feats)
        second, _ = tiny_encoder(changed)
    # Random 0.02-std weights make attention nearly uniform, so the effect is small, but a chunk mask
    # would leave the first token bit-identical.
    assert (first[0, 0] - second[0, 0]).abs().max() > 1e-6


def test_padded_batch_equals_one_by_one(tiny_encoder):
    clips = [compute_fbank(noise(seconds, 0.1, seed=i)) for i, seconds in enumerate((0.3, 1.7, 1.0, 2.2))]
    lengths = torch.tensor([len(c) for c in clips])
    padded = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(c) for c in clips], batch_first=True)
    with torch.inference_mode():
        batched, counts = tiny_encoder(padded, lengths)
        for i, clip in enumerate(clips):
            alone, alone_count = tiny_encoder(torch.from_numpy(clip).unsqueeze(0))
            assert counts[i] == alone_count[0]
            torch.testing.assert_close(batched[i, : counts[i]], alone[0], rtol=0, atol=1e-5)


def test_incremental_subsampling_equals_one_shot(tiny_encoder):
    feats = compute_fbank(noise(3.0, 0.1, seed=7))
    partial = PartialEncoding()
    rng = np.random.default_rng(1)
    begin = 0
    with torch.inference_mode():
        while begin < len(feats):
            step = int(rng.integers(1, 12))
            partial.append_frames(feats[begin : begin + step])
            partial.advance(tiny_encoder)
            begin += step
        one_shot = tiny_encoder.subsample(torch.from_numpy(feats).unsqueeze(0))[0]
    assert partial.num_rows == one_shot.size(0)
    torch.testing.assert_close(partial.rows(), one_shot, rtol=0, atol=1e-6)


def test_loader_is_seeded_and_plausible():
    first = load_audio_encoder(TINY.audio, seed=SEED, device="cpu", dtype=torch.float32)
    again = load_audio_encoder(TINY.audio, seed=SEED, device="cpu", dtype=torch.float32)
    other = load_audio_encoder(TINY.audio, seed=SEED + 1, device="cpu", dtype=torch.float32)
    for (name, a), (_, b) in zip(first.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert not torch.equal(first.adpter.project.weight, other.adpter.project.weight)
    cmvn = first.encoder.global_cmvn
    assert 5.0 < cmvn.mean.mean() < 20.0 and (cmvn.istd > 0).all() and cmvn.istd.mean() < 1.0
    assert not first.training and not any(p.requires_grad for p in first.parameters())


def test_loader_dtype_and_checkpoint_contract():
    half = load_audio_encoder(TINY.audio, seed=SEED, device="cpu", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    with pytest.raises(CheckpointError):
        load_audio_encoder(TINY.audio, seed=SEED, device="cpu", dtype=torch.float32, checkpoint_dir=Path("/nowhere"))
