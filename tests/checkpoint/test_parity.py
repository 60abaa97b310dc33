"""Loaded checkpoint vs the model's equations (docs/MODEL.md#vision, #audio, #speech), written out here
in plain float64 torch.

The reference side never calls runtime code: it reads the tensors by their OFFICIAL names straight from
the synthesized files, so a wrong key mapping, a transposed or mis-split weight, a wrong weight-norm fold or
a wrong formula all show up. (Fbank frames against the Kaldi definition, the sampling rule and the
pixel-shuffle order on an index tensor are already covered in tests/audio, tests/speech and tests/vision.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from services.audio.features import compute_fbank
from services.audio.weights import load_audio_encoder
from services.speech.weights import load_speech_models
from services.vision.weights import load_vision
from shared.checkpoint.files import read_json

from .test_roundtrip import shard_tensors

VIT = "model.vision_tower.vision_tower."
PROJ = "model.mm_projector."
AUD = "model.audio_encoder."
CPU, FP32 = "cpu", torch.float32
ATOL = 2e-5


class Float64(dict):
    """Tensors by official key, widened to float64 on first use (bf16 widens exactly)."""

    def __getitem__(self, key):
        value = super().__getitem__(key)
        if value.dtype != torch.float64:
            value = value.double()
            self[key] = value
        return value


@pytest.fixture(scope="module")
def W(tiny_checkpoint) -> dict[str, torch.Tensor]:
    """Every shard tensor by its official key."""
    return Float64(shard_tensors(tiny_checkpoint))


# --- vision (docs/MODEL.md#vision-encoder) --------------------------------------------------------


def ref_vit_embeddings(W, pixels, patch):
    weight = W[VIT + "embeddings.patch_embedding.weight"]
    grid = F.conv2d(pixels, weight, W[VIT + "embeddings.patch_embedding.bias"], stride=patch)  # [n, D, 32, 32]
    tokens = grid.flatten(2).transpose(1, 2)  # token index = row·32 + col
    cls = W[VIT + "embeddings.class_embedding"].expand(pixels.shape[0], 1, -1)
    return torch.cat([cls, tokens], dim=1) + W[VIT + "embeddings.position_embedding"]


def ref_vit_block(W, i, h, heads, eps=1e-6):
    p = f"{VIT}encoder.layers.{i}."
    n, t, d = h.shape
    hd = d // heads
    x = F.layer_norm(h, (d,), W[p + "norm1.weight"], W[p + "norm1.bias"], eps)
    qkv = x @ W[p + "attn.qkv.weight"].T + W[p + "attn.qkv.bias"]
    q, k, v = (qkv[..., j * d:(j + 1) * d].reshape(n, t, heads, hd).transpose(1, 2) for j in range(3))  # [q|k|v], head-major
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1) @ v
    attn = attn.transpose(1, 2).reshape(n, t, d) @ W[p + "attn.proj.weight"].T + W[p + "attn.proj.bias"]
    h = h + W[p + "ls1"] * attn
    x = F.layer_norm(h, (d,), W[p + "norm2.weight"], W[p + "norm2.bias"], eps)
    mlp = F.gelu(x @ W[p + "mlp.fc1.weight"].T + W[p + "mlp.fc1.bias"]) @ W[p + "mlp.fc2.weight"].T + W[p + "mlp.fc2.bias"]
    return h + W[p + "ls2"] * mlp


def ref_shuffle(features):
    """Output cell (i, j) = cells (2i,2j), (2i,2j+1), (2i+1,2j), (2i+1,2j+1) concatenated."""
    n, rows, cols, c = features.shape
    out = torch.empty(n, rows // 2, cols // 2, 4 * c, dtype=features.dtype)
    for i in range(rows // 2):
        for j in range(cols // 2):
            cells = [features[:, 2 * i + a, 2 * j + b] for a in (0, 1) for b in (0, 1)]
            out[:, i, j] = torch.cat(cells, dim=-1)
    return out


def test_internvit_embeddings_block_shuffle_and_projector(tiny_checkpoint, W):
    model = load_vision(None, seed=0, device=CPU, dtype=FP32, checkpoint_dir=tiny_checkpoint)
    dims = model.dims
    pixels = torch.randn(1, 3, dims.image_size, dims.image_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        embedded = model.vision_tower.embeddings(pixels)
        first_block = model.vision_tower.encoder.layers[0](embedded)
        served = model(pixels)
    h = ref_vit_embeddings(W, pixels.double(), dims.patch_size)
    torch.testing.assert_close(embedded.double(), h, rtol=0, atol=ATOL)
    torch.testing.assert_close(first_block.double(), ref_vit_block(W, 0, embedded.double(), dims.num_heads), rtol=0, atol=ATOL)
    for i in range(dims.num_layers):
        h = ref_vit_block(W, i, h, dims.num_heads)  # no final norm
    side = dims.image_size // dims.patch_size
    features = ref_shuffle(h[:, 1:].reshape(1, side, side, -1) * 0.5).reshape(1, -1, 4 * dims.hidden_size)
    hidden = F.gelu(features @ W[PROJ + "0.weight"].T + W[PROJ + "0.bias"])
    expected = hidden @ W[PROJ + "2.weight"].T + W[PROJ + "2.bias"]
    assert served.shape == (1, 256, dims.llm_hidden)
    torch.testing.assert_close(served.double(), expected, rtol=0, atol=ATOL)


# --- audio (docs/MODEL.md#audio-encoder) ----------------------------------------------------------


def ref_cmvn_from_json(path):
    stats = read_json(path)
    count = stats["frame_num"]
    mean = torch.tensor(stats["mean_stat"], dtype=torch.float64) / count
    var = (torch.tensor(stats["var_stat"], dtype=torch.float64) / count - mean**2).clamp_min(1e-20)
    return mean, var.rsqrt()


def ref_sinusoid(rows, d):
    pos = torch.arange(rows, dtype=torch.float64)[:, None]
    table = torch.zeros(rows, d, dtype=torch.float64)
    angle = pos / 10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    table[:, 0::2], table[:, 1::2] = torch.sin(angle), torch.cos(angle)
    return table


def ref_rel_attention(W, p, x, pos, heads):
    """score(h,t,s) = [(q_t + u_h)·k_s + (q_t + v_h)·p_s] / √d_k, full attention (docs/MODEL.md#audio-encoder)."""
    t, d = x.shape[1], x.shape[2]
    hd = d // heads
    lin = lambda name, y: y @ W[f"{p}self_attn.linear_{name}.weight"].T + W[f"{p}self_attn.linear_{name}.bias"]
    split = lambda y: y.reshape(y.shape[0], -1, heads, hd).transpose(1, 2)
    q, k, v = split(lin("q", x)), split(lin("k", x)), split(lin("v", x))
    pp = split((pos @ W[f"{p}self_attn.linear_pos.weight"].T)[None])
    u = W[f"{p}self_attn.pos_bias_u"][None, :, None, :]
    vb = W[f"{p}self_attn.pos_bias_v"][None, :, None, :]
    scores = ((q + u) @ k.transpose(-1, -2) + (q + vb) @ pp.transpose(-1, -2)) / math.sqrt(hd)
    out = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(x.shape[0], t, d)
    return lin("out", out)


def ref_audio_layer(W, i, x, pos, heads):
    p = f"{AUD}encoder.enc.1.encoders.{i}."
    d = x.shape[-1]
    ln = lambda name, y: F.layer_norm(y, (d,), W[p + name + ".weight"], W[p + name + ".bias"], 1e-5)
    x = x + ref_rel_attention(W, p, ln("norm1", x), pos, heads)
    hidden = torch.relu(ln("norm2", x) @ W[p + "feed_forward.w_1.weight"].T + W[p + "feed_forward.w_1.bias"])
    return x + hidden @ W[p + "feed_forward.w_2.weight"].T + W[p + "feed_forward.w_2.bias"]


def test_cmvn_subsampling_rel_enc_layer_and_adapter(tiny_checkpoint, W):
    model = load_audio_encoder(None, seed=0, device=CPU, dtype=FP32, checkpoint_dir=tiny_checkpoint)
    dims = model.dims
    rng = np.random.default_rng(3)
    wave = (0.1 * rng.standard_normal(16000) + 0.3 * np.sin(np.arange(16000) * 0.07)).astype(np.float32)
    feats = torch.from_numpy(compute_fbank(wave))[None]  # [1, 98, 80] raw log-mel (runtime fbank: tests/audio)
    with torch.inference_mode():
        subsampled = model.subsample(feats)
        table = model.encoder.enc[1].pos_table[: subsampled.shape[1]][None]
        embedded = model.encoder.enc[1].embed(subsampled) * math.sqrt(dims.attention_dim)
        layer0 = model.encoder.enc[1].encoders[0](embedded, None, table)
        served, lengths = model(feats)

    # CMVN: the shard buffers (what the reference serves); they are the JSON stats' values in bf16.
    x = (feats.double() - W[AUD + "encoder.global_cmvn.mean"]) * W[AUD + "encoder.global_cmvn.istd"]
    json_mean, _ = ref_cmvn_from_json(tiny_checkpoint / "audio-encoder-Qwen2-7B-1107-weight-base-11wh-tunning" / "global_cmvn")
    assert (json_mean - W[AUD + "encoder.global_cmvn.mean"]).abs().max() < 0.07  # bf16 rounding of means 6..18
    # Conv2dSubsampling4: two 3×3 stride-2 convs + ReLU, channel-major flatten, Linear.
    c = f"{AUD}encoder.enc.0.core."
    y = torch.relu(F.conv2d(x[:, None], W[c + "conv.0.weight"], W[c + "conv.0.bias"], stride=2))
    y = torch.relu(F.conv2d(y, W[c + "conv.2.weight"], W[c + "conv.2.bias"], stride=2))  # [1, C, T1, 19]
    y = y.permute(0, 2, 1, 3).reshape(1, y.shape[2], -1) @ W[c + "out.0.weight"].T + W[c + "out.0.bias"]
    assert y.shape[1] == ((98 - 1) // 2 - 1) // 2 == 23
    torch.testing.assert_close(subsampled.double(), y, rtol=0, atol=1e-4)
    # Input layer: Linear → LayerNorm → ReLU, ×√d; the sinusoid goes to attention, not into x.
    e = f"{AUD}encoder.enc.1.embed."
    h = y @ W[e + "0.weight"].T + W[e + "0.bias"]
    h = torch.relu(F.layer_norm(h, (dims.attention_dim,), W[e + "1.weight"], W[e + "1.bias"], 1e-5)) * math.sqrt(dims.attention_dim)
    pos = ref_sinusoid(h.shape[1], dims.attention_dim)
    torch.testing.assert_close(layer0.double(), ref_audio_layer(W, 0, embedded.double(), pos, dims.attention_heads), rtol=0, atol=1e-4)
    for i in range(dims.num_blocks):
        h = ref_audio_layer(W, i, h, pos, dims.attention_heads)
    a = f"{AUD}encoder.enc.1.after_norm."
    h = F.layer_norm(h, (dims.attention_dim,), W[a + "weight"], W[a + "bias"], 1e-5)
    # Adapter: right-pad k−1 zeros, Conv1d stride 2, LayerNorm(eps 1e-3), GELU, Linear.
    ad = f"{AUD}adpter."
    z = F.conv1d(F.pad(h.transpose(1, 2), (0, dims.adapter_kernel_size - 1)), W[ad + "conv1d2.weight"], W[ad + "conv1d2.bias"], stride=2)
    z = F.gelu(F.layer_norm(z.transpose(1, 2), (dims.adapter_hidden,), W[ad + "bn2.weight"], W[ad + "bn2.bias"], 1e-3))
    expected = z @ W[ad + "project.weight"].T + W[ad + "project.bias"]
    assert lengths.tolist() == [12] and served.shape == expected.shape == (1, 12, dims.llm_hidden)
    torch.testing.assert_close(served.double(), expected, rtol=0, atol=1e-4)


# --- speech (docs/MODEL.md#speech) ----------------------------------------------------------------


def rms(x, w, eps=1e-6):
    return x * (x.pow(2).mean(-1, keepdim=True) + eps).rsqrt() * w


def rope(x, positions, theta=10000.0):
    """Rotate-half RoPE: dim i pairs with dim i + head_dim/2. x [heads, T, hd]."""
    hd = x.shape[-1]
    freqs = positions.double()[:, None] / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    rotated = torch.cat([-x[..., hd // 2:], x[..., : hd // 2]], -1)
    return x * cos + rotated * sin


def ref_llama_layer(D, p, x, positions, heads, past=None):
    """One HF-Llama layer over x [T, d] at `positions`, attending to past (k, v) + itself with no mask.
    Returns the output and this layer's (k, v) including the past."""
    t, d = x.shape
    hd = d // heads
    h = rms(x, D[p + "input_layernorm.weight"])
    proj = lambda name: (h @ D[f"{p}self_attn.{name}_proj.weight"].T).reshape(t, heads, hd).transpose(0, 1)
    q, k, v = rope(proj("q"), positions), rope(proj("k"), positions), proj("v")
    if past is not None:
        k, v = torch.cat([past[0], k], 1), torch.cat([past[1], v], 1)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1) @ v
    x = x + attn.transpose(0, 1).reshape(t, d) @ D[p + "self_attn.o_proj.weight"].T
    h = rms(x, D[p + "post_attention_layernorm.weight"])
    mlp = (F.silu(h @ D[p + "mlp.gate_proj.weight"].T) * (h @ D[p + "mlp.up_proj.weight"].T)) @ D[p + "mlp.down_proj.weight"].T
    return x + mlp, (k, v)


@pytest.fixture(scope="module")
def speech(tiny_checkpoint):
    return load_speech_models(None, None, None, seed=0, device=CPU, dtype=FP32, checkpoint_dir=tiny_checkpoint)


def test_tts_pre_net_and_one_ar_step_after_a_non_causal_prefill(tiny_checkpoint, W, speech):
    models = speech
    tts = models.tts
    dims = tts.dims
    D = {k: v.double() for k, v in torch.load(tiny_checkpoint / "vita_tts_ckpt/decoder/final.pt", weights_only=True).items()}
    ids = torch.tensor([9707, 11, 1879, 0])  # "Hello, world!"
    frames = W["model.embed_tokens.weight"][ids].reshape(1, -1, dims.hidden_size)  # 4 frames per token
    n = frames.shape[1]
    with torch.inference_mode():
        pre = tts.pre_net(models.embed_table[ids].float().reshape(1, -1, dims.hidden_size))
        cache = tts.new_cache(n + 8)
        tts.prefill(pre, cache)
        logits = tts.decode_step(torch.tensor([dims.codec_vocab + 1]), [cache])[0]  # SOS = 1025

    h = frames[0]
    for i in range(dims.num_blocks // 2):  # pre-net: bidirectional, positions 0 … 4n−1, no final norm
        h, _ = ref_llama_layer(D, f"layers_pre_nn.{i}.", h, torch.arange(n), dims.num_heads)
    torch.testing.assert_close(pre[0].double(), h, rtol=0, atol=ATOL)
    # Prefill [Emb(BOS=1024), h] at positions 0 … 4n with FULL attention; then SOS at position 4n+1.
    x = torch.cat([D["embedding.weight"][dims.codec_vocab][None], pre[0].double()])
    caches = []
    for i in range(dims.num_blocks):
        x, kv = ref_llama_layer(D, f"layers.{i}.", x, torch.arange(n + 1), dims.num_heads)
        caches.append(kv)
    y = D["embedding.weight"][dims.codec_vocab + 1][None]
    for i in range(dims.num_blocks):
        y, _ = ref_llama_layer(D, f"layers.{i}.", y, torch.tensor([n + 1]), dims.num_heads, past=caches[i])
    expected = rms(y, D["norm.weight"]) @ D["out_fnn.weight"].T + D["out_fnn.bias"]
    assert logits.shape == (dims.codec_vocab + 4,)
    torch.testing.assert_close(logits.double(), expected[0], rtol=0, atol=ATOL)


def ref_resblock(G, name, x, kernel, dilations):
    for m, d in enumerate(dilations):
        xt = F.conv1d(F.leaky_relu(x, 0.1), G[f"{name}.convs1.{m}.weight"], G[f"{name}.convs1.{m}.bias"], dilation=d, padding=(kernel * d - d) // 2)
        xt = F.conv1d(F.leaky_relu(xt, 0.1), G[f"{name}.convs2.{m}.weight"], G[f"{name}.convs2.{m}.bias"], padding=(kernel - 1) // 2)
        x = xt + x
    return x


def test_codec_generator_from_weight_norm_weights(tiny_checkpoint, speech):
    codec = speech.codec
    c = codec.dims
    raw = torch.load(tiny_checkpoint / "vita_tts_ckpt/codec/final.pt", weights_only=True)
    G = {}
    for key, value in raw["generator"].items():  # fold: w = g · v / ‖v‖, norm over all dims but 0
        if key.endswith("_g"):
            v = raw["generator"][key[:-1] + "v"].double()
            G[key[:-2]] = value.double() * v / v.flatten(1).norm(dim=1).view(-1, 1, 1)
        elif key.endswith(".bias"):
            G[key] = value.double()
    Q = {key: value.double() for key, value in raw["quantizer"].items()}
    ids = torch.randint(0, c.n_codes, (1, 9), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        served = codec(ids)

    x = F.conv1d(Q["quantizer_modules.0.embedding.weight"][ids[0]].T[None], G["conv_pre.weight"], G["conv_pre.bias"], padding=3)
    style = torch.cat([Q[f"quantizer_modules_globaltokens.{i}.embedding.weight"][t] for i, t in enumerate(c.global_tokens)])
    kernels = list(zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes))
    for stage, (rate, kernel) in enumerate(zip(c.upsample_rates, c.upsample_kernel_sizes)):
        x = F.conv_transpose1d(F.leaky_relu(x, 0.1), G[f"ups.{stage}.weight"], G[f"ups.{stage}.bias"], stride=rate, padding=(kernel - rate) // 2)
        x = sum(ref_resblock(G, f"resblocks.{stage * len(kernels) + j}", x, k, d) for j, (k, d) in enumerate(kernels)) / len(kernels)
        if x.shape[1] == style.shape[0]:  # the stage whose width equals the global vector
            x = x + style[None, :, None]
    expected = torch.tanh(F.conv1d(F.leaky_relu(x, 0.1), G["conv_post.weight"], G["conv_post.bias"], padding=3))[:, 0]
    assert served.shape == expected.shape == (1, 9 * c.hop_length)
    torch.testing.assert_close(served.double(), expected, rtol=0, atol=1e-5)
