"""InternViT + pixel shuffle + projector against docs/MODEL.md#vision-encoder and the official names."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from services.vision.model import VisionEncoder, pixel_shuffle
from services.vision.weights import load_vision
from shared.checkpoint import CheckpointError
from shared.presets import FULL, TINY

DIMS = TINY.vision


@pytest.fixture(scope="module")
def model() -> VisionEncoder:
    return load_vision(DIMS, seed=TINY.init_seed, device="cpu", dtype=torch.float32)


def test_pixel_shuffle_order_on_an_index_tensor() -> None:
    # Channel value = input cell index, so each output channel names the cell it came from.
    index = torch.arange(32 * 32, dtype=torch.float32).reshape(1, 32, 32, 1)
    out = pixel_shuffle(index)
    assert out.shape == (1, 16, 16, 4)
    assert out[0, 3, 5].tolist() == [6 * 32 + 10, 6 * 32 + 11, 7 * 32 + 10, 7 * 32 + 11]


def _reference_shuffle(x: torch.Tensor) -> torch.Tensor:
    """The view/permute sequence of the reference `pixel_shuffle(x, 0.5)`, re-derived from docs/MODEL.md."""
    n, w, h, c = x.shape
    x = x.view(n, w, h // 2, c * 2).permute(0, 2, 1, 3).contiguous()
    x = x.view(n, h // 2, w // 2, c * 4).permute(0, 2, 1, 3).contiguous()
    return x


def test_pixel_shuffle_matches_the_reference_sequence_on_channels() -> None:
    x = torch.randn(2, 32, 32, 6)
    assert torch.equal(pixel_shuffle(x), _reference_shuffle(x))


def test_256_tokens_per_tile_at_llm_width(model: VisionEncoder) -> None:
    tiles = torch.randn(2, 3, 448, 448)
    with torch.inference_mode():
        out = model(tiles)
    assert DIMS.tokens_per_tile == 256
    assert out.shape == (2, 256, DIMS.llm_hidden)
    assert torch.isfinite(out).all()


def _naive_forward(model: VisionEncoder, tiles: torch.Tensor) -> torch.Tensor:
    """docs/MODEL.md#vision-encoder written out with explicit softmax attention (the reference's non-flash path)."""
    tower = model.vision_tower
    emb = tower.embeddings
    patches = emb.patch_embedding(tiles).flatten(2).transpose(1, 2)
    h = torch.cat([emb.class_embedding.expand(tiles.shape[0], 1, -1), patches], 1) + emb.position_embedding
    heads, head_dim = DIMS.num_heads, DIMS.hidden_size // DIMS.num_heads
    for layer in tower.encoder.layers:
        x = layer.norm1(h)
        b, n, c = x.shape
        q, k, v = layer.attn.qkv(x).reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        attn = ((q * head_dim**-0.5) @ k.transpose(-2, -1)).softmax(-1)
        h = h + layer.attn.proj((attn @ v).transpose(1, 2).reshape(b, n, c)) * layer.ls1
        h = h + layer.mlp.fc2(F.gelu(layer.mlp.fc1(layer.norm2(h)))) * layer.ls2
    features = h[:, 1:].reshape(tiles.shape[0], 32, 32, -1)
    shuffled = _reference_shuffle(features * 0.5).reshape(tiles.shape[0], 256, -1)
    proj = model.mm_projector
    return proj[2](F.gelu(proj[0](shuffled)))


def test_forward_equals_the_written_out_spec(model: VisionEncoder) -> None:
    # Random weights are tame (std 0.02); give layer scales and biases some size so every term matters.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.add_(torch.randn(param.shape, generator=generator) * 0.5)
        tiles = torch.randn(2, 3, 448, 448, generator=generator)
        expected = _naive_forward(model, tiles)
        actual = model(tiles)
    assert (actual - expected).abs().max().item() < 1e-5


def test_position_table_is_resized_only_for_other_grids(model: VisionEncoder) -> None:
    emb = model.vision_tower.embeddings
    assert torch.equal(emb._patch_positions(32, 32), emb.position_embedding[:, 1:, :])
    assert emb._patch_positions(16, 24).shape == (1, 16 * 24, DIMS.hidden_size)
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 224, 336)).shape == (1, 8 * 12, DIMS.llm_hidden)


def test_parameter_names_and_shapes_follow_the_checkpoint_at_full_size() -> None:
    with torch.device("meta"):
        full = VisionEncoder(FULL.vision)
    shapes = {name: tuple(t.shape) for name, t in full.state_dict().items()}
    expected = {
        "vision_tower.embeddings.class_embedding": (1, 1, 1024),
        "vision_tower.embeddings.position_embedding": (1, 1025, 1024),
        "vision_tower.embeddings.patch_embedding.weight": (1024, 3, 14, 14),
        "vision_tower.embeddings.patch_embedding.bias": (1024,),
        "mm_projector.0.weight": (3584, 4096),
        "mm_projector.0.bias": (3584,),
        "mm_projector.2.weight": (3584, 3584),
        "mm_projector.2.bias": (3584,),
    }
    per_layer = {
        "attn.qkv.weight": (3072, 1024), "attn.qkv.bias": (3072,),
        "attn.proj.weight": (1024, 1024), "attn.proj.bias": (1024,),
        "mlp.fc1.weight": (4096, 1024), "mlp.fc1.bias": (4096,),
        "mlp.fc2.weight": (1024, 4096), "mlp.fc2.bias": (1024,),
        "norm1.weight": (1024,), "norm1.bias": (1024,), "norm2.weight": (1024,), "norm2.bias": (1024,),
        "ls1": (1024,), "ls2": (1024,),
    }
    for layer in range(24):
        for key, shape in per_layer.items():
            expected[f"vision_tower.encoder.layers.{layer}.{key}"] = shape
    assert shapes == expected
    tower = sum(t.numel() for n, t in full.state_dict().items() if n.startswith("vision_tower."))
    assert round(tower / 1e6, 1) == 304.0  # docs/MODEL.md#checkpoints


def test_random_weights_are_seeded_and_an_empty_checkpoint_dir_is_refused(tmp_path) -> None:
    a = load_vision(DIMS, seed=7, device="cpu", dtype=torch.float32)
    b = load_vision(DIMS, seed=7, device="cpu", dtype=torch.float32)
    c = load_vision(DIMS, seed=8, device="cpu", dtype=torch.float32)
    for (name, pa), (_, pb), (_, pc) in zip(
        a.state_dict().items(), b.state_dict().items(), c.state_dict().items(), strict=True
    ):
        assert torch.equal(pa, pb), name
        if pa.dim() >= 2:
            assert not torch.equal(pa, pc), name
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    assert load_vision(DIMS, seed=7, device="cpu", dtype=torch.bfloat16).mm_projector[0].weight.dtype == torch.bfloat16
    with pytest.raises(CheckpointError):
        load_vision(DIMS, seed=7, device="cpu", dtype=torch.float32, checkpoint_dir=tmp_path)
