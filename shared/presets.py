"""Model dimensions for every module, by preset.

`full` is VITA-1.5 (docs/MODEL.md#presets); `tiny` keeps every architecture and every rate of `full` (patch 14 at
448 px, 80 mel bins, ×4 subsampling, 4 TTS frames per text token, ×600 codec upsampling, the real Qwen
vocabulary) with small widths, so that it runs on 2 CPU cores. Random weights are seeded per module; the
LLM input-embedding table is shared by the LLM and the speech service, so both derive it from the same
seed (see `shared.random_weights`).

When a checkpoint directory is served, the dimensions come from its own config files instead (docs/CHECKPOINTS.md);
these dataclasses are then filled by the checkpoint loader, never hard-coded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

QWEN_VOCAB_SIZE = 152064  # embedding rows of Qwen2.5-7B (151665 used by the tokenizer, the rest padding)


@dataclass(frozen=True)
class LLMDims:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768


@dataclass(frozen=True)
class TTSDims:
    """The TTS decoder (docs/MODEL.md#tts). `hidden_size` equals LLM width / 4 (4 frames per text token)."""

    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_blocks: int  # pre-net has num_blocks // 2 layers; AR stack and (unused) prefix stack num_blocks
    codec_vocab: int = 1024  # + 4 specials: BOS 1024, SOS 1025, EOS 1026, PAD 1027
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048

    @property
    def pre_net_layers(self) -> int:
        return self.num_blocks // 2


@dataclass(frozen=True)
class CodecDims:
    """TiCodec generator (docs/MODEL.md#codec)."""

    codebook_dim: int
    upsample_initial_channel: int
    upsample_rates: tuple[int, ...] = (8, 5, 5, 3)
    upsample_kernel_sizes: tuple[int, ...] = (16, 11, 11, 5)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    n_codes: int = 1024
    global_code_num: int = 8
    global_dim: int = 128
    # Fixed voice: one id per global codebook (Freeze-Omni model.json values, docs/MODEL.md#d-voice-ids).
    global_tokens: tuple[int, ...] = (473, 975, 419, 219, 565, 121, 550, 616)
    sampling_rate: int = 24000

    @property
    def hop_length(self) -> int:
        hop = 1
        for rate in self.upsample_rates:
            hop *= rate
        return hop


@dataclass(frozen=True)
class AudioEncoderDims:
    """Whale encoder + adapter (docs/MODEL.md#audio-encoder)."""

    num_mel_bins: int
    attention_dim: int
    attention_heads: int
    linear_units: int
    num_blocks: int
    adapter_hidden: int  # Conv1d output channels (2048 in VITA-1.5)
    llm_hidden: int
    adapter_kernel_size: int = 5
    pos_table_size: int = 5000


@dataclass(frozen=True)
class VisionDims:
    """InternViT + pixel shuffle + projector (docs/MODEL.md#vision-encoder)."""

    image_size: int
    patch_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    llm_hidden: int
    layer_norm_eps: float = 1e-6
    downsample_ratio: float = 0.5

    @property
    def tokens_per_tile(self) -> int:
        side = int(self.image_size // self.patch_size * self.downsample_ratio)
        return side * side

    @property
    def projector_in(self) -> int:
        return int(self.hidden_size / (self.downsample_ratio**2))


# The longest visual input the model's own rules produce, in vision tiles of `VisionDims.tokens_per_tile` rows
# each (docs/MODEL.md#vision-encoder): a video's 16 sampled frames, or an image's 12 tiles + its thumbnail.
LONGEST_VISUAL_TILES = 16
# Room every preset's context keeps beside that input: the system prompt and chat markers, a question, the
# default reply (256 tokens) and at least one earlier turn of history.
VISUAL_INPUT_HEADROOM_TOKENS = 2048


@dataclass(frozen=True)
class ModelPreset:
    name: str
    llm: LLMDims
    tts: TTSDims
    codec: CodecDims
    audio: AudioEncoderDims
    vision: VisionDims
    # Served context limit in tokens (prompt + reply); at most llm.max_position_embeddings. It holds
    # LONGEST_VISUAL_TILES tiles plus VISUAL_INPUT_HEADROOM_TOKENS (a 60 s video is 16 × 256 = 4096 rows alone).
    max_context_tokens: int = 8192
    init_seed: int = 1234
    extras: dict[str, str] = field(default_factory=dict)


TINY = ModelPreset(
    name="tiny",
    llm=LLMDims(
        vocab_size=QWEN_VOCAB_SIZE,
        hidden_size=256,
        intermediate_size=512,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
    ),
    tts=TTSDims(hidden_size=64, intermediate_size=128, num_heads=4, num_blocks=2),
    codec=CodecDims(codebook_dim=64, upsample_initial_channel=64, global_dim=16),
    audio=AudioEncoderDims(
        num_mel_bins=80,
        attention_dim=64,
        attention_heads=4,
        linear_units=128,
        num_blocks=2,
        adapter_hidden=128,
        llm_hidden=256,
    ),
    vision=VisionDims(
        image_size=448,
        patch_size=14,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        llm_hidden=256,
    ),
    max_context_tokens=8192,
)

FULL = ModelPreset(
    name="full",
    llm=LLMDims(
        vocab_size=QWEN_VOCAB_SIZE,
        hidden_size=3584,
        intermediate_size=18944,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
        head_dim=128,
    ),
    tts=TTSDims(hidden_size=896, intermediate_size=4864, num_heads=14, num_blocks=4),
    codec=CodecDims(codebook_dim=512, upsample_initial_channel=512, global_dim=128),
    audio=AudioEncoderDims(
        num_mel_bins=80,
        attention_dim=1024,
        attention_heads=16,
        linear_units=4096,
        num_blocks=24,
        adapter_hidden=2048,
        llm_hidden=3584,
    ),
    vision=VisionDims(
        image_size=448,
        patch_size=14,
        hidden_size=1024,
        intermediate_size=4096,
        num_layers=24,
        num_heads=16,
        llm_hidden=3584,
    ),
    max_context_tokens=8192,
)

PRESETS: dict[str, ModelPreset] = {TINY.name: TINY, FULL.name: FULL}


def get_preset(name: str) -> ModelPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
