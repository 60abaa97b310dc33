"""InternViT + pixel shuffle + MLP projector (docs/MODEL.md#vision-encoder) in plain torch.

Input: ImageNet-normalised tiles [n, 3, 448, 448]. Output: LLM-width embeddings [n, 256, llm_hidden],
256 LLM positions per tile. Parameter names follow the official checkpoint (docs/MODEL.md#checkpoints) relative to the
`vision_tower.` and `mm_projector.` prefixes, so the later checkpoint loader only strips
`model.vision_tower.vision_tower.` / `model.` and loads with strict=True.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shared.presets import VisionDims

# The projector was trained on features scaled by 0.5 before the shuffle (docs/MODEL.md#vision-encoder).
FEATURE_SCALE_BEFORE_SHUFFLE = 0.5


class InternVisionEmbeddings(nn.Module):
    """Patch Conv2d + learned CLS + learned positions (CLS row first)."""

    def __init__(self, dims: VisionDims) -> None:
        super().__init__()
        self.grid_side = dims.image_size // dims.patch_size
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, dims.hidden_size))
        self.patch_embedding = nn.Conv2d(
            3, dims.hidden_size, kernel_size=dims.patch_size, stride=dims.patch_size, bias=True
        )
        self.position_embedding = nn.Parameter(torch.zeros(1, self.grid_side**2 + 1, dims.hidden_size))

    def _patch_positions(self, rows: int, cols: int) -> torch.Tensor:
        """Position rows for a rows×cols grid; bicubic-resized only when the grid is not the trained one."""
        table = self.position_embedding[:, 1:, :]
        if rows == self.grid_side and cols == self.grid_side:
            return table
        side = self.grid_side
        # Resized in fp32 like the reference, whatever the weights' dtype.
        grid = table.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
        return grid.reshape(1, -1, rows * cols).permute(0, 2, 1).to(table.dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixel_values.to(dtype))  # [n, d, rows, cols]
        n, _, rows, cols = patches.shape
        patches = patches.flatten(2).transpose(1, 2)  # token index = row * cols + col
        cls = self.class_embedding.expand(n, 1, -1).to(dtype)
        positions = torch.cat([self.position_embedding[:, :1, :], self._patch_positions(rows, cols)], dim=1)
        return torch.cat([cls, patches], dim=1) + positions.to(dtype)


class InternAttention(nn.Module):
    """Full (bidirectional) multi-head attention with one fused qkv projection."""

    def __init__(self, dims: VisionDims) -> None:
        super().__init__()
        if dims.hidden_size % dims.num_heads:
            raise ValueError(f"hidden_size {dims.hidden_size} is not divisible by num_heads {dims.num_heads}")
        self.num_heads = dims.num_heads
        self.head_dim = dims.hidden_size // dims.num_heads
        self.qkv = nn.Linear(dims.hidden_size, 3 * dims.hidden_size, bias=True)
        self.proj = nn.Linear(dims.hidden_size, dims.hidden_size, bias=True)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        n, tokens, width = hidden.shape
        # Output rows are [q | k | v], each block head-major (as in the checkpoint's fused `qkv`).
        qkv = self.qkv(hidden).reshape(n, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [n, heads, tokens, head_dim]
        # SDPA's default scale is 1/sqrt(head_dim), the reference's scale.
        context = F.scaled_dot_product_attention(q, k, v)
        return self.proj(context.transpose(1, 2).reshape(n, tokens, width))


class InternMLP(nn.Module):
    def __init__(self, dims: VisionDims) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dims.hidden_size, dims.intermediate_size, bias=True)
        self.fc2 = nn.Linear(dims.intermediate_size, dims.hidden_size, bias=True)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(hidden)))  # exact (erf) GELU, ACT2FN["gelu"]


class InternVisionEncoderLayer(nn.Module):
    """Pre-norm block with layer scale: h += ls1*Attn(LN1 h); h += ls2*MLP(LN2 h)."""

    def __init__(self, dims: VisionDims) -> None:
        super().__init__()
        self.attn = InternAttention(dims)
        self.mlp = InternMLP(dims)
        self.norm1 = nn.LayerNorm(dims.hidden_size, eps=dims.layer_norm_eps)
        self.norm2 = nn.LayerNorm(dims.hidden_size, eps=dims.layer_norm_eps)
        self.ls1 = nn.Parameter(torch.ones(dims.hidden_size))
        self.ls2 = nn.Parameter(torch.ones(dims.hidden_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden + self.attn(self.norm1(hidden)) * self.ls1
        return hidden + self.mlp(self.norm2(hidden)) * self.ls2


class InternVisionEncoder(nn.Module):
    def __init__(self, dims: VisionDims) -> None:
        super().__init__()
        self.layers = nn.ModuleList(InternVisionEncoderLayer(dims) for _ in range(dims.num_layers))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(hidden)
        return hidden


class InternVisionModel(nn.Module):
    """The ViT tower. Returns the last layer's output [n, 1 + patches, d]; there is no final norm."""

    def __init__(self, dims: VisionDims) -> None:
        super().__init__()
        self.embeddings = InternVisionEmbeddings(dims)
        self.encoder = InternVisionEncoder(dims)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embeddings(pixel_values))


def pixel_shuffle(features: torch.Tensor) -> torch.Tensor:
    """[n, H, W, c] → [n, H/2, W/2, 4c]; out (i, j) = in (2i,2j), (2i,2j+1), (2i+1,2j), (2i+1,2j+1).

    Row offset outer, column offset inner (docs/MODEL.md#vision-encoder), the order the projector was trained on.
    """
    n, rows, cols, channels = features.shape
    if rows % 2 or cols % 2:
        raise ValueError(f"pixel shuffle needs an even patch grid, got {rows}×{cols}")
    blocks = features.reshape(n, rows // 2, 2, cols // 2, 2, channels)
    return blocks.permute(0, 1, 3, 2, 4, 5).reshape(n, rows // 2, cols // 2, 4 * channels)


def build_projector(dims: VisionDims) -> nn.Sequential:
    """`mlp2x_gelu`: keys `0.*` and `2.*` as in the checkpoint."""
    return nn.Sequential(
        nn.Linear(dims.projector_in, dims.llm_hidden, bias=True),
        nn.GELU(approximate="none"),
        nn.Linear(dims.llm_hidden, dims.llm_hidden, bias=True),
    )


class VisionEncoder(nn.Module):
    """Tiles [n, 3, S, S] → LLM embeddings [n, (S/28)², llm_hidden] (256 per tile at S = 448)."""

    def __init__(self, dims: VisionDims) -> None:
        super().__init__()
        if dims.downsample_ratio != 0.5:
            raise ValueError(f"only a 2×2 pixel shuffle is implemented, got ratio {dims.downsample_ratio}")
        self.dims = dims
        self.vision_tower = InternVisionModel(dims)
        self.mm_projector = build_projector(dims)

    def tile_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tower features after CLS drop, ×0.5 and shuffle: [n, tokens_per_tile, projector_in]."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"expected tiles [n, 3, H, W], got {tuple(pixel_values.shape)}")
        patch_size = self.dims.patch_size
        rows, cols = pixel_values.shape[2] // patch_size, pixel_values.shape[3] // patch_size
        hidden = self.vision_tower(pixel_values)[:, 1:, :]  # drop CLS
        grid = hidden.reshape(hidden.shape[0], rows, cols, -1) * FEATURE_SCALE_BEFORE_SHUFFLE
        shuffled = pixel_shuffle(grid)
        return shuffled.reshape(shuffled.shape[0], -1, shuffled.shape[-1])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.mm_projector(self.tile_features(pixel_values))
