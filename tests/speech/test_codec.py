"""TiCodec decoder (docs/MODEL.md#codec): names, output length and range, global vector, weight-norm folding, ids."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from services.speech.codec import LRELU_SLOPE, TiCodecDecoder, fold_weight_norm
from shared.presets import FULL, TINY


def test_full_size_names_and_shapes_match_the_official_checkpoint() -> None:
    with torch.device("meta"):
        codec = TiCodecDecoder(FULL.codec)
    generator = {k: tuple(v.shape) for k, v in codec.generator.state_dict().items()}
    assert generator["conv_pre.weight"] == (512, 512, 7)
    assert [generator[f"ups.{i}.weight"] for i in range(4)] == [(512, 256, 16), (256, 128, 11), (128, 64, 11), (64, 32, 5)]
    assert generator["conv_post.weight"] == (1, 32, 7)
    assert generator["resblocks.11.convs2.2.weight"] == (32, 32, 11)
    assert sum(1 for k in generator if k.startswith("resblocks.")) == 12 * 2 * 3 * 2
    quantizer = {k: tuple(v.shape) for k, v in codec.quantizer.state_dict().items()}
    expected = {"quantizer_modules.0.embedding.weight": (1024, 512)}
    expected |= {f"quantizer_modules_globaltokens.{i}.embedding.weight": (1024, 16) for i in range(8)}
    assert quantizer == expected
    assert codec.generator.global_stages == [1]  # 128 channels: after ×8·×5


def test_waveform_has_600_samples_per_token_and_is_audible(tiny_models) -> None:
    ids = torch.randint(0, 1024, (2, 37), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        wave = tiny_models.codec(ids)
    assert wave.shape == (2, 600 * 37)
    assert torch.isfinite(wave).all()
    assert wave.abs().max() <= 1.0
    assert wave.abs().mean() > 0.01  # the random init is meant to be heard, not ~0


def test_global_vector_is_the_concatenation_of_codebook_rows(tiny_models) -> None:
    quantizer = tiny_models.codec.quantizer
    tokens = TINY.codec.global_tokens
    expected = torch.cat([quantizer.quantizer_modules_globaltokens[i].embedding.weight[t] for i, t in enumerate(tokens)])
    assert torch.equal(quantizer.global_vector(tokens)[0], expected)


def _forward_adding_global_at(codec: TiCodecDecoder, ids: torch.Tensor, stage_to_add: int) -> torch.Tensor:
    generator = codec.generator
    x = generator.conv_pre(codec.quantizer.embed(ids))
    vector = codec.quantizer.global_vector(codec.dims.global_tokens)
    for stage, up in enumerate(generator.ups):
        x = up(F.leaky_relu(x, LRELU_SLOPE))
        blocks = generator.resblocks[stage * 3 : stage * 3 + 3]
        x = (blocks[0](x) + blocks[1](x) + blocks[2](x)) / 3
        if stage == stage_to_add:
            x = x + vector.unsqueeze(-1)
    return torch.tanh(generator.conv_post(F.leaky_relu(x, LRELU_SLOPE))).squeeze(1)


def test_global_vector_is_added_after_the_stage_with_global_dim_channels(tiny_models) -> None:
    codec = tiny_models.codec
    assert codec.generator.global_stages == [1]  # tiny: 64 → 32 → 16 (= global_dim) → 8 → 4
    ids = torch.randint(0, 1024, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        actual = codec(ids)
        assert torch.allclose(actual, _forward_adding_global_at(codec, ids, 1), atol=1e-6)
        without_global = _forward_adding_global_at(codec, ids, -1)
    assert (actual - without_global).abs().max() > 1e-3  # the voice vector does shape the waveform


@pytest.mark.parametrize(
    "module",
    [nn.Conv1d(6, 5, 7, padding=3), nn.ConvTranspose1d(6, 3, 11, 5, padding=3)],
    ids=["conv1d", "conv_transpose1d"],
)
def test_fold_weight_norm_equals_torch_weight_norm(module: nn.Module) -> None:
    torch.manual_seed(0)
    normed = weight_norm(module, dim=0)
    with torch.no_grad():
        normed.parametrizations.weight.original0.mul_(torch.rand_like(normed.parametrizations.weight.original0) + 0.5)
    g = normed.parametrizations.weight.original0.detach()
    v = normed.parametrizations.weight.original1.detach()
    assert g.shape == (v.shape[0], 1, 1)  # dim 0 of the stored weight (input channels for ConvTranspose)
    folded = fold_weight_norm({"m.weight_g": g, "m.weight_v": v, "m.bias": normed.bias.detach()})
    assert set(folded) == {"m.weight", "m.bias"}
    assert torch.allclose(folded["m.weight"], normed.weight.detach(), atol=1e-6)
    x = torch.randn(2, 6, 20)
    reference = normed(x)
    normed_weight = folded["m.weight"]
    if isinstance(module, nn.ConvTranspose1d):
        out = F.conv_transpose1d(x, normed_weight, folded["m.bias"], stride=5, padding=3)
    else:
        out = F.conv1d(x, normed_weight, folded["m.bias"], padding=3)
    assert torch.allclose(out, reference, atol=1e-5)


def test_fold_weight_norm_rejects_half_pairs() -> None:
    with pytest.raises(ValueError):
        fold_weight_norm({"m.weight_g": torch.ones(2, 1, 1)})
    with pytest.raises(ValueError):
        fold_weight_norm({"m.weight_v": torch.ones(2, 1, 1)})


@pytest.mark.parametrize("bad_id", [1024, 1027, -1])
def test_ids_outside_the_codebook_raise_value_error(tiny_models, bad_id: int) -> None:
    ids = torch.tensor([[1, 2, bad_id]])
    with pytest.raises(ValueError, match="codec ids"):
        tiny_models.codec(ids)
