"""Builds the speech models: the LLM input-embedding table, the TTS decoder and the TiCodec decoder."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from services.speech.codec import TiCodecDecoder
from services.speech.tts import TTSDecoder
from shared.presets import CodecDims, LLMDims, TTSDims
from shared.random_weights import init_module_, llm_embedding_table, module_generator

TTS_FRAMES_PER_TEXT_TOKEN = 4  # docs/MODEL.md#speech-input: each LLM embedding row becomes 4 TTS frames

# Random codec init (see `init_codec_`): He gain for the LeakyReLU stack, damped residual branches and a
# quiet output conv. Measured at seed 1234: mean |x| ≈ 0.05 (tiny) / 0.09 (full), peaks ≈ 0.4–0.5.
CODEC_CONV_GAIN = math.sqrt(2.0)
CODEC_RESIDUAL_GAIN = 0.5
CODEC_POST_GAIN = 0.1


@dataclass(frozen=True)
class SpeechModels:
    # [vocab, llm_hidden] on the CPU: only n rows are read per segment, and the full-size table
    # (2.2 GB in fp32) would waste accelerator memory. fp32 when random; from a checkpoint it is
    # memory-mapped in its stored dtype (bf16), and the rows looked up widen exactly.
    embed_table: torch.Tensor
    tts: TTSDecoder
    codec: TiCodecDecoder

    @property
    def frames_per_text_token(self) -> int:
        return self.embed_table.shape[1] // self.tts.dims.hidden_size


def _fan_in(module: nn.Module, weight: torch.Tensor) -> float:
    if isinstance(module, nn.ConvTranspose1d):
        in_channels, _, kernel = weight.shape  # stored [C_in, C_out, k]
        return in_channels * kernel / module.stride[0]  # taps that reach one output sample
    _, in_channels, kernel = weight.shape
    return float(in_channels * kernel)


def init_codec_(codec: TiCodecDecoder, base_seed: int) -> TiCodecDecoder:
    """Seeded random codec whose waveform is audible but never clips or turns NaN.

    N(0, 0.02) (the shared default) shrinks the signal through 4 stages of LeakyReLU + conv: the output
    is ~0, useless for listening to the demo or for testing the low-energy splice. Instead:
    codebooks N(0, 1); conv weights N(0, gain² / fan_in) with He gain √2; the second conv of each residual
    branch at gain 0.5 so 3 residual additions per ResBlock do not blow up; conv_post at gain 0.1 so the
    tanh output stays in its linear range (mean |x| below the first-segment splice threshold of 0.1,
    which lets first-segment chunks stream); biases 0. Values are finite by construction (no division).
    """
    generator = module_generator(base_seed, "speech.codec")
    modules = dict(codec.named_modules())
    with torch.no_grad():
        for name, param in sorted(codec.named_parameters(), key=lambda item: item[0]):
            owner_name, leaf = name.rsplit(".", 1)
            if leaf == "bias":
                param.zero_()
                continue
            if owner_name.endswith("embedding"):
                param.copy_(torch.randn(param.shape, generator=generator))
                continue
            owner = modules[owner_name]
            gain = CODEC_CONV_GAIN
            if ".convs2." in name:
                gain = CODEC_RESIDUAL_GAIN
            elif owner_name == "generator.conv_post":
                gain = CODEC_POST_GAIN
            std = gain / math.sqrt(_fan_in(owner, param))
            param.copy_(torch.randn(param.shape, generator=generator) * std)
    return codec


def load_speech_models(
    tts: TTSDims,
    codec: CodecDims,
    llm: LLMDims,
    *,
    seed: int,
    device: torch.device | str,
    dtype: torch.dtype,
    checkpoint_dir: Path | None = None,
) -> SpeechModels:
    """The one entry point. Random weights (seeded) for presets, or the official checkpoint.

    `dtype` is the TTS decoder's compute dtype; the codec stays fp32 (the reference never casts
    the codec weights) and the embedding table stays on the CPU (fp32 when random; memory-mapped in its
    stored dtype from a checkpoint, whose rows widen exactly).

    With `checkpoint_dir` (the VITA-1.5 directory) the dims arguments and `seed` are ignored: the
    dimensions come from the checkpoint's config files (the returned `tts.dims`, `codec.dims` and
    `embed_table.shape`); an unusable checkpoint raises `shared.checkpoint.CheckpointError`.
    """
    if checkpoint_dir is not None:
        from services.speech.checkpoint import load_speech_checkpoint

        embed_table, tts_model, codec_model = load_speech_checkpoint(Path(checkpoint_dir), device=device, dtype=dtype)
        return SpeechModels(embed_table=embed_table, tts=tts_model, codec=codec_model)
    if llm.hidden_size != TTS_FRAMES_PER_TEXT_TOKEN * tts.hidden_size:
        raise ValueError(
            f"LLM hidden {llm.hidden_size} must be {TTS_FRAMES_PER_TEXT_TOKEN} × TTS hidden {tts.hidden_size}"
        )
    if tts.codec_vocab != codec.n_codes:
        raise ValueError(f"TTS codec vocabulary {tts.codec_vocab} != codec n_codes {codec.n_codes}")

    # Same seed and module name as the LLM service: both hold the identical table (docs/MODEL.md#speech-input).
    embed_table = llm_embedding_table(llm, seed)
    tts_model = init_module_(TTSDecoder(tts), seed, "speech.tts")
    codec_model = init_codec_(TiCodecDecoder(codec), seed)
    tts_model = tts_model.to(device=device, dtype=dtype).eval()
    codec_model = codec_model.to(device=device, dtype=torch.float32).eval()
    for module in (tts_model, codec_model):
        module.requires_grad_(False)
    return SpeechModels(embed_table=embed_table, tts=tts_model, codec=codec_model)
