"""TiCodec decoder: codec ids → codebook embedding → HiFiGAN-style generator → 24 kHz waveform
(docs/MODEL.md#codec).

Runtime weights are plain (folded) convolutions; `fold_weight_norm` turns the checkpoint's
`weight_g`/`weight_v` pairs into them. Module names match `codec/final.pt`: `generator.*` keys equal
`final.pt['generator']` after folding, `quantizer.*` keys equal `final.pt['quantizer']`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from shared.presets import CodecDims

LRELU_SLOPE = 0.1
CONV_PRE_KERNEL = 7
CONV_POST_KERNEL = 7


def fold_weight_norm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every `<name>.weight_g` / `<name>.weight_v` pair by `<name>.weight` = g · v / ‖v‖.

    The norm runs over every dim except dim 0 of the stored weight (torch's weight_norm with dim=0).
    For a ConvTranspose1d the stored weight is [C_in, C_out, k], so dim 0 is the *input* channel.
    Other entries are copied unchanged.
    """
    folded: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(".weight_v"):
            continue
        if not key.endswith(".weight_g"):
            folded[key] = value
            continue
        stem = key[: -len(".weight_g")]
        direction = state_dict.get(f"{stem}.weight_v")
        if direction is None:
            raise ValueError(f"{key} has no matching {stem}.weight_v")
        norm = direction.float().flatten(1).norm(dim=1).view(-1, *([1] * (direction.dim() - 1)))
        folded[f"{stem}.weight"] = (direction.float() * (value.float() / norm)).to(direction.dtype)
    orphans = [k for k in state_dict if k.endswith(".weight_v") and f"{k[:-2]}_g" not in state_dict]
    if orphans:
        raise ValueError(f"weight_v without weight_g: {orphans}")
    return folded


def _dilated_padding(kernel_size: int, dilation: int) -> int:
    return (kernel_size * dilation - dilation) // 2


class ResBlock1(nn.Module):
    """HiFiGAN ResBlock1: 3 × [lrelu → dilated conv → lrelu → conv] each with a residual connection."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, 1, dilation=d, padding=_dilated_padding(kernel_size, d))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, 1, dilation=1, padding=_dilated_padding(kernel_size, 1))
            for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv1, conv2 in zip(self.convs1, self.convs2):
            branch = conv2(F.leaky_relu(conv1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
            x = branch + x
        return x


class Generator(nn.Module):
    """conv_pre → 4 × [lrelu → ConvTranspose1d ×s → MRF (+ global vector)] → lrelu → conv_post → tanh."""

    def __init__(self, dims: CodecDims):
        super().__init__()
        if len(dims.upsample_rates) != len(dims.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes differ in length")
        self.num_kernels = len(dims.resblock_kernel_sizes)
        channels = dims.upsample_initial_channel
        self.conv_pre = nn.Conv1d(dims.codebook_dim, channels, CONV_PRE_KERNEL, 1, padding=CONV_PRE_KERNEL // 2)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        # Stages whose MRF output width equals the global vector: the reference adds the vector there
        # (with 512 initial channels and a 128-d vector: stage 1, after ×8·×5).
        self.global_stages: list[int] = []
        for stage, (rate, kernel) in enumerate(zip(dims.upsample_rates, dims.upsample_kernel_sizes)):
            if (kernel - rate) % 2:
                raise ValueError(f"upsample kernel {kernel} and rate {rate} must differ by an even number")
            out_channels = channels // 2
            self.ups.append(nn.ConvTranspose1d(channels, out_channels, kernel, rate, padding=(kernel - rate) // 2))
            for res_kernel, dilations in zip(dims.resblock_kernel_sizes, dims.resblock_dilation_sizes):
                self.resblocks.append(ResBlock1(out_channels, res_kernel, tuple(dilations)))
            if out_channels == dims.global_dim:
                self.global_stages.append(stage)
            channels = out_channels
        if not self.global_stages:
            raise ValueError(f"no upsampling stage has {dims.global_dim} channels for the global vector")
        self.conv_post = nn.Conv1d(channels, 1, CONV_POST_KERNEL, 1, padding=CONV_POST_KERNEL // 2)

    def forward(self, x: torch.Tensor, global_vector: torch.Tensor) -> torch.Tensor:
        """x [B, codebook_dim, T]; global_vector [B or 1, global_dim] → waveform [B, 1, hop·T] in [−1, 1]."""
        x = self.conv_pre(x)
        for stage, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            first = stage * self.num_kernels
            mrf = self.resblocks[first](x)
            for offset in range(1, self.num_kernels):
                mrf = mrf + self.resblocks[first + offset](x)
            x = mrf / self.num_kernels
            if stage in self.global_stages:
                x = x + global_vector.unsqueeze(-1)
        x = self.conv_post(F.leaky_relu(x, LRELU_SLOPE))
        return torch.tanh(x)


class CodebookEmbedding(nn.Module):
    """`Quantizer_module`: only its table is used at inference (ids → vectors)."""

    def __init__(self, n_codes: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_codes, dim)


class CodecQuantizer(nn.Module):
    """Codebook tables: one local codebook (n_code_groups = 1, residual layers = 1) + 8 global codebooks."""

    def __init__(self, dims: CodecDims):
        super().__init__()
        if dims.global_dim % dims.global_code_num:
            raise ValueError(f"global_dim {dims.global_dim} is not divisible by {dims.global_code_num}")
        self.n_codes = dims.n_codes
        self.quantizer_modules = nn.ModuleList([CodebookEmbedding(dims.n_codes, dims.codebook_dim)])
        self.quantizer_modules_globaltokens = nn.ModuleList(
            CodebookEmbedding(dims.n_codes, dims.global_dim // dims.global_code_num)
            for _ in range(dims.global_code_num)
        )

    def check_ids(self, ids: torch.Tensor) -> None:
        """Fail clearly before the embedding: ids ≥ n_codes (e.g. TTS specials 1024–1027) are no code."""
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.n_codes):
            bad = ids[(ids < 0) | (ids >= self.n_codes)].unique().tolist()
            raise ValueError(f"codec ids must lie in [0, {self.n_codes}); got {bad[:8]}")

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T] → [B, codebook_dim, T]."""
        self.check_ids(ids)
        return self.quantizer_modules[0].embedding(ids).transpose(1, 2)

    def global_vector(self, global_tokens: tuple[int, ...]) -> torch.Tensor:
        """[1, global_dim]: concatenation of row global_tokens[i] of global codebook i, in order."""
        if len(global_tokens) != len(self.quantizer_modules_globaltokens):
            raise ValueError(
                f"{len(global_tokens)} global tokens for {len(self.quantizer_modules_globaltokens)} codebooks"
            )
        self.check_ids(torch.tensor(global_tokens))
        rows = [
            codebook.embedding.weight[token]
            for codebook, token in zip(self.quantizer_modules_globaltokens, global_tokens)
        ]
        return torch.cat(rows).unsqueeze(0)


class TiCodecDecoder(nn.Module):
    """ids [B, T] → waveform [B, hop·T] with the fixed voice of `dims.global_tokens`."""

    def __init__(self, dims: CodecDims):
        super().__init__()
        self.dims = dims
        self.quantizer = CodecQuantizer(dims)
        self.generator = Generator(dims)

    @property
    def hop_length(self) -> int:
        return self.dims.hop_length

    @property
    def sampling_rate(self) -> int:
        return self.dims.sampling_rate

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2:
            raise ValueError(f"expected codec ids [B, T], got {tuple(ids.shape)}")
        features = self.quantizer.embed(ids)
        # Recomputed per call (8 row lookups): stays right if the codebooks are reloaded.
        global_vector = self.quantizer.global_vector(self.dims.global_tokens)
        return self.generator(features, global_vector).squeeze(1)
