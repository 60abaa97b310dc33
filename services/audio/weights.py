"""The one way to obtain a ready audio encoder: seeded random weights (presets) or an official checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from services.audio.encoder import WhaleAudioEncoder
from shared.presets import AudioEncoderDims
from shared.random_weights import init_module_, module_generator

# Seed-stream names: changing one changes the random weights of every deployment, so they are fixed.
_ENCODER_STREAM = "audio.encoder"
_ADAPTER_STREAM = "audio.adapter"
_CMVN_STREAM = "audio.global_cmvn"

# Random CMVN statistics in the range of real log-mel fbank of speech (the Whale FE config starts with
# mean 11.84, istd 0.333), so that normalised features are ~N(0, 1) as with real weights.
_CMVN_MEAN_CENTRE = 12.0
_CMVN_MEAN_SPREAD = 2.0
_CMVN_ISTD_CENTRE = 0.33
_CMVN_ISTD_SPREAD = 0.05


def load_audio_encoder(
    dims: AudioEncoderDims,
    *,
    seed: int,
    device: str | torch.device,
    dtype: torch.dtype,
    checkpoint_dir: Path | None = None,
) -> WhaleAudioEncoder:
    """An eval-mode, grad-free Whale encoder + adapter on `device` in `dtype`.

    Without a checkpoint every tensor is seeded from named streams (`shared.random_weights`), so the
    weights do not depend on the device, the dtype or the order modules are built in.

    With `checkpoint_dir` (the VITA-1.5 directory) `dims` and `seed` are ignored: the dimensions come from
    the audio encoder's train.yaml (the returned model's `.dims`) and the weights from the VITA safetensors
    (docs/CHECKPOINTS.md); an unusable checkpoint raises `shared.checkpoint.CheckpointError`.
    """
    if checkpoint_dir is not None:
        from services.audio.checkpoint import load_audio_checkpoint

        return load_audio_checkpoint(Path(checkpoint_dir), device=device, dtype=dtype)

    model = WhaleAudioEncoder(dims)
    with torch.no_grad():
        init_module_(model.encoder, seed, _ENCODER_STREAM)
        init_module_(model.adpter, seed, _ADAPTER_STREAM)
        gen = module_generator(seed, _CMVN_STREAM)
        bins = dims.num_mel_bins
        model.encoder.global_cmvn.mean.copy_(_CMVN_MEAN_CENTRE + _CMVN_MEAN_SPREAD * torch.randn(bins, generator=gen))
        istd = _CMVN_ISTD_CENTRE + _CMVN_ISTD_SPREAD * torch.randn(bins, generator=gen)
        model.encoder.global_cmvn.istd.copy_(istd.clamp_min(0.05))
    model = model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model
