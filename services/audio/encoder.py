"""Whale audio encoder + CNN adapter in plain torch (docs/MODEL.md#audio-encoder, #audio-adapter).

Raw log-mel fbank [B, T, 80] → global CMVN → Conv2dSubsampling4 [B, T1, d] (25 Hz) → rel-enc transformer
(full attention, see below) → adapter [B, L, llm_hidden] (12.5 Hz), with
T1 = ((T − 1)//2 − 1)//2 and L = (T1 − 1)//2 + 1.

Parameter and buffer names are those of the reference state dict (docs/MODEL.md#checkpoints): `encoder.global_cmvn.*`,
`encoder.enc.0.core.{conv,out}.*`, `encoder.enc.1.{embed,encoders.N,after_norm}.*` and `adpter.*`, so the
official `final.pt` / safetensors load without renaming.

Attention mask: the served (vLLM) model uses a padding mask only, i.e. full bidirectional attention.
We do the same (docs/MODEL.md#d-audio-attention): the HF path's chunk masks depend on a train.yaml that
is not public, and its `dynamic-chunks` default is random at eval, which a server must not be.

The model is split at the subsampling so that a stream can run the local part (CMVN + two strided 3×3
convolutions, receptive field 7 frames, stride 4) while the user speaks (`subsample`), and the global
part (transformer + adapter) once at end of speech (`encode_subsampled`); `forward` chains both.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from services.audio.features import AudioInputError, AudioTooShortError
from shared.presets import AudioEncoderDims

SUBSAMPLING_RECEPTIVE_FIELD = 7  # fbank frames behind one subsampled row
SUBSAMPLING_STRIDE = 4
MIN_FBANK_FRAMES = SUBSAMPLING_RECEPTIVE_FIELD  # T ≥ 7 gives T1 = 1 (N ≥ 1360 samples, 85 ms)
ADAPTER_STRIDE = 2
ENCODER_FRAME_RATE_HZ = 25.0
LLM_TOKEN_RATE_HZ = 12.5
LAYER_NORM_EPS = 1e-5
ADAPTER_NORM_EPS = 1e-3
# The reference fills masked scores with the fp16 minimum (not -inf) in every dtype, then zeroes them.
MASKED_SCORE = float(torch.finfo(torch.float16).min)


def num_encoder_frames(num_fbank_frames: int) -> int:
    """T1 = ((T − 1)//2 − 1)//2; equals the reference mask rule mask[2::2][2::2]. 0 below 7 frames."""
    if num_fbank_frames < MIN_FBANK_FRAMES:
        return 0
    return ((num_fbank_frames - 1) // 2 - 1) // 2


def num_llm_tokens(num_encoder_rows: int) -> int:
    """L = (T1 − 1)//2 + 1 (the adapter mask rule [0::2])."""
    if num_encoder_rows <= 0:
        return 0
    return (num_encoder_rows - 1) // ADAPTER_STRIDE + 1


def fbank_span_of_rows(first_row: int, end_row: int) -> slice:
    """The fbank frames that subsampled rows [first_row, end_row) depend on.

    Row i reads frames 4i … 4i+6; a slice that starts at a multiple of 4 keeps the stride-2 grids of both
    convolutions aligned with the whole-utterance computation.
    """
    return slice(SUBSAMPLING_STRIDE * first_row, SUBSAMPLING_STRIDE * (end_row - 1) + SUBSAMPLING_RECEPTIVE_FIELD)


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """Standard table: sin on even dims, cos on odd dims, base 10000 (docs/MODEL.md#audio-encoder)."""
    position = torch.arange(num_positions, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term)
    return table


class GlobalCMVN(nn.Module):
    """x ← (x − mean) · istd with global statistics; the only place CMVN is applied."""

    def __init__(self, num_bins: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_bins))
        self.register_buffer("istd", torch.ones(num_bins))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean) * self.istd


class Conv2dSubsampling4(nn.Module):
    """[B, T, F] → [B, T1, d]: two Conv2d(3×3, stride 2) + ReLU, channel-major flatten, Linear."""

    def __init__(self, num_bins: int, dim: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, dim, 3, 2),
            nn.ReLU(),
            nn.Conv2d(dim, dim, 3, 2),
            nn.ReLU(),
        )
        freq_after = ((num_bins - 1) // 2 - 1) // 2  # 80 → 39 → 19
        self.out = nn.Sequential(nn.Linear(dim * freq_after, dim))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if feats.size(1) < MIN_FBANK_FRAMES:
            raise AudioTooShortError(
                f"audio is too short to encode: {feats.size(1)} fbank frames, at least {MIN_FBANK_FRAMES} "
                f"needed (85 ms at 16 kHz)"
            )
        x = self.conv(feats.unsqueeze(1))  # [B, d, T1, F']
        batch, channels, rows, freq = x.shape
        # Channel-major (index c·F' + f), as the reference; frequency-major gives different results.
        return self.out(x.transpose(1, 2).reshape(batch, rows, channels * freq))


class SubsamplingComponent(nn.Module):
    """`enc.0` of the reference: a holder whose only child is `core`."""

    def __init__(self, num_bins: int, dim: int) -> None:
        super().__init__()
        self.core = Conv2dSubsampling4(num_bins, dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.core(feats)


class RelPositionAttention(nn.Module):
    """Transformer-XL style attention without rel_shift (docs/MODEL.md#audio-encoder).

    score(h, t, s) = [(q_t + u_h)·k_s + (q_t + v_h)·p_s] / √head_dim, where p_s is the projected absolute
    sinusoid of key position s: the second term is a query-dependent absolute-position bias.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.zeros(num_heads, self.head_dim))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, d] → [B, T, heads, head_dim]."""
        return x.view(x.size(0), x.size(1), self.num_heads, self.head_dim)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None, pos_emb: torch.Tensor) -> torch.Tensor:
        """x [B, T, d]; key_valid [B, T] bool (True = real frame) or None; pos_emb [1, T, d]."""
        q = self._heads(self.linear_q(x))  # [B, T, h, dk]
        k = self._heads(self.linear_k(x)).transpose(1, 2)  # [B, h, T, dk]
        v = self._heads(self.linear_v(x)).transpose(1, 2)
        p = self._heads(self.linear_pos(pos_emb.to(x.dtype))).transpose(1, 2)  # [1, h, T, dk]
        q_u = (q + self.pos_bias_u).transpose(1, 2)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        scores = (q_u @ k.transpose(-2, -1) + q_v @ p.transpose(-2, -1)) / math.sqrt(self.head_dim)
        if key_valid is not None:
            masked = ~key_valid[:, None, None, :]  # [B, 1, 1, T]: padding keys only
            scores = scores.masked_fill(masked, MASKED_SCORE)
            attn = torch.softmax(scores, dim=-1).masked_fill(masked, 0.0)
        else:
            attn = torch.softmax(scores, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(x.size(0), x.size(1), -1)
        return self.linear_out(out)


class PositionwiseFeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(torch.relu(self.w_1(x)))


class TransformerLayer(nn.Module):
    """Pre-LN: x += MHA(LN1(x)); x += FFN(LN2(x))."""

    def __init__(self, dim: int, num_heads: int, ffn_hidden: int) -> None:
        super().__init__()
        self.self_attn = RelPositionAttention(dim, num_heads)
        self.feed_forward = PositionwiseFeedForward(dim, ffn_hidden)
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None, pos_emb: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x), key_valid, pos_emb)
        return x + self.feed_forward(self.norm2(x))


class RelTransformer(nn.Module):
    """`enc.1`: Linear → LayerNorm → ReLU, ×√d, N pre-LN rel-enc layers, after_norm."""

    def __init__(self, dims: AudioEncoderDims) -> None:
        super().__init__()
        dim = dims.attention_dim
        self.embed = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim, eps=LAYER_NORM_EPS), nn.ReLU())
        self.xscale = math.sqrt(dim)
        # Not in the reference state dict (it is a plain attribute there), so not persistent here either.
        self.register_buffer("pos_table", sinusoid_table(dims.pos_table_size, dim), persistent=False)
        self.encoders = nn.ModuleList(
            TransformerLayer(dim, dims.attention_heads, dims.linear_units) for _ in range(dims.num_blocks)
        )
        self.after_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
        rows = x.size(1)
        if rows > self.pos_table.size(0):
            seconds = self.pos_table.size(0) / ENCODER_FRAME_RATE_HZ
            raise AudioInputError(f"audio is too long to encode: at most {seconds:.0f} s per clip")
        x = self.embed(x) * self.xscale
        # The sinusoid is passed to attention, never added to x, as in the reference.
        pos_emb = self.pos_table[:rows].unsqueeze(0)
        for layer in self.encoders:
            x = layer(x, key_valid, pos_emb)
        return self.after_norm(x)


class WhaleEncoder(nn.Module):
    """`encoder`: global CMVN, `enc.0` subsampling, `enc.1` transformer."""

    def __init__(self, dims: AudioEncoderDims) -> None:
        super().__init__()
        self.global_cmvn = GlobalCMVN(dims.num_mel_bins)
        self.enc = nn.ModuleList([SubsamplingComponent(dims.num_mel_bins, dims.attention_dim), RelTransformer(dims)])

    def subsample(self, feats: torch.Tensor) -> torch.Tensor:
        return self.enc[0](self.global_cmvn(feats))


class CnnSubsamplingAdapter(nn.Module):
    """`adpter` (type "subsampling", cnn_num 1): zero padding frames, right-pad k−1, Conv1d stride 2,
    LayerNorm(eps 1e-3), GELU, Linear (docs/MODEL.md#audio-adapter)."""

    def __init__(self, dims: AudioEncoderDims) -> None:
        super().__init__()
        self.kernel_size = dims.adapter_kernel_size
        self.conv1d2 = nn.Conv1d(dims.attention_dim, dims.adapter_hidden, dims.adapter_kernel_size, ADAPTER_STRIDE)
        self.bn2 = nn.LayerNorm(dims.adapter_hidden, eps=ADAPTER_NORM_EPS)
        self.activation = nn.GELU()
        self.project = nn.Linear(dims.adapter_hidden, dims.llm_hidden)

    def forward(self, x: torch.Tensor, row_valid: torch.Tensor | None) -> torch.Tensor:
        """x [B, T1, d] → [B, L, llm_hidden] with L = (T1 − 1)//2 + 1."""
        if row_valid is not None:
            x = x.masked_fill(~row_valid.unsqueeze(-1), 0.0)
        x = nn.functional.pad(x.transpose(1, 2), (0, self.kernel_size - 1))
        x = self.conv1d2(x).transpose(1, 2)
        return self.project(self.activation(self.bn2(x)))


class WhaleAudioEncoder(nn.Module):
    """Encoder + adapter: raw fbank [B, T, 80] → LLM embeddings [B, L, llm_hidden]."""

    def __init__(self, dims: AudioEncoderDims) -> None:
        super().__init__()
        self.dims = dims
        self.encoder = WhaleEncoder(dims)
        self.adpter = CnnSubsamplingAdapter(dims)  # sic: the reference key prefix

    @property
    def device(self) -> torch.device:
        return self.encoder.global_cmvn.mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.adpter.project.weight.dtype

    def subsample(self, feats: torch.Tensor) -> torch.Tensor:
        """CMVN + Conv2dSubsampling4: [B, T, 80] raw log-mel → [B, T1, d]. Local in time."""
        return self.encoder.subsample(feats)

    def encode_subsampled(self, rows: torch.Tensor, row_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Transformer + adapter: [B, T1, d] → [B, L_max, llm_hidden]; rows past a length are padding."""
        row_valid = None
        if row_lengths is not None:
            positions = torch.arange(rows.size(1), device=rows.device)
            row_valid = positions.unsqueeze(0) < row_lengths.to(rows.device).unsqueeze(1)
            if bool(row_valid.all()):
                row_valid = None  # same result, fewer ops
        hidden = self.encoder.enc[1](rows, row_valid)
        return self.adpter(hidden, row_valid)

    def forward(
        self, feats: torch.Tensor, frame_lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, 80] (+ valid frame counts [B]) → (embeddings [B, L_max, H], token counts [B])."""
        if frame_lengths is None:
            frame_lengths = torch.full((feats.size(0),), feats.size(1), dtype=torch.long)
        frame_counts = [int(n) for n in frame_lengths]
        if min(frame_counts) < MIN_FBANK_FRAMES:
            raise AudioTooShortError(
                f"audio is too short to encode: {min(frame_counts)} fbank frames, at least {MIN_FBANK_FRAMES} "
                f"needed (85 ms at 16 kHz)"
            )
        row_lengths = torch.tensor([num_encoder_frames(n) for n in frame_counts], dtype=torch.long)
        rows = self.subsample(feats)
        embeddings = self.encode_subsampled(rows, row_lengths)
        token_counts = torch.tensor([num_llm_tokens(int(n)) for n in row_lengths], dtype=torch.long)
        return embeddings, token_counts
