"""End of speech → embeddings ready, through AudioStream + AudioEngine.

    python scripts/bench_audio_eos.py [--preset tiny|full] [--device cpu|cuda] [--repeats 5] [--realtime]

For each utterance length the audio is pushed in 40 ms chunks (fbank and subsampling run meanwhile),
then the utterance ends by a push-to-talk commit, and, with espeak-ng installed, by VAD (500 ms of
silence after real speech). Reported: the server-side time from the call that ended the utterance to
the embeddings being ready (median / max over repeats), the work left at that point, and the
non-streaming alternative (fbank + whole encoder after end of speech) for comparison.

Without --realtime the chunks are pushed as fast as possible and the worker is allowed to catch up
before the end (what happens in real time whenever subsampling is faster than speech; the "speaking"
column shows its cost per second of audio).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time

import numpy as np
import torch

from services.audio.engine import AudioEngine
from services.audio.features import compute_fbank, decode_audio_file, to_pcm16
from services.audio.stream import AudioStream, UtteranceReady, wait_for_utterances
from services.audio.vad import VadConfig
from services.audio.weights import load_audio_encoder
from shared.presets import get_preset

CHUNK_SAMPLES = 640  # 40 ms at 16 kHz
DURATIONS_S = (2.0, 5.0, 10.0)
PHRASES = (
    "Hello there, what is the weather like in Paris today, and should I take an umbrella with me?",
    "Please tell me a short story about a brave little robot who wanted to see the ocean.",
)


def speech(seconds: float) -> np.ndarray | None:
    """About `seconds` of espeak-ng speech at 16 kHz (phrases repeated, cut), or None without espeak."""
    if shutil.which("espeak-ng") is None:
        return None
    text = " ".join(PHRASES * 4)
    wav = subprocess.run(["espeak-ng", "--stdout", "-s", "175", text], capture_output=True, check=True).stdout
    samples = decode_audio_file(wav)
    voiced = np.flatnonzero(np.abs(samples) > 1e-3)
    return samples[voiced[0] : voiced[0] + int(seconds * 16000)]


def push(stream: AudioStream, samples: np.ndarray, realtime: bool) -> list:
    events, started = [], time.perf_counter()
    for begin in range(0, len(samples), CHUNK_SAMPLES):
        events += stream.push(to_pcm16(samples[begin : begin + CHUNK_SAMPLES]).tobytes())
        if realtime:
            time.sleep(max(0.0, started + (begin + CHUNK_SAMPLES) / 16000 - time.perf_counter()))
    return events


def ready_of(events: list) -> UtteranceReady:
    return next(e for e in wait_for_utterances(events, 60.0) if isinstance(e, UtteranceReady))


def run_push_to_talk(engine: AudioEngine, samples: np.ndarray, realtime: bool) -> UtteranceReady:
    stream = engine.new_stream(VadConfig(max_utterance_ms=60000), 16000, "pcm16", vad_enabled=False)
    push(stream, samples, realtime)
    engine.wait_idle()
    return ready_of(stream.commit())


def run_vad(engine: AudioEngine, samples: np.ndarray, realtime: bool) -> UtteranceReady:
    stream = engine.new_stream(VadConfig(max_utterance_ms=60000), 16000, "pcm16", vad_enabled=True)
    events = push(stream, np.concatenate([np.zeros(8000, np.float32), samples]), realtime)
    engine.wait_idle()
    # Silence until the detector ends the utterance; the chunk that ends it starts the clock.
    silence = np.zeros(CHUNK_SAMPLES, np.float32)
    while not any(type(e).__name__ == "SpeechStopped" for e in events):
        events += stream.push(to_pcm16(silence).tobytes())
    return ready_of(events)


def non_streaming_ms(engine: AudioEngine, pcm16k: np.ndarray) -> float:
    started = time.perf_counter()
    feats = torch.from_numpy(compute_fbank(pcm16k.astype(np.float32) / 32768))
    engine.encode(feats).result(60.0)
    return (time.perf_counter() - started) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--realtime", action="store_true", help="pace the chunks at real time")
    args = parser.parse_args()

    preset = get_preset(args.preset)
    encoder = load_audio_encoder(
        preset.audio, seed=preset.init_seed, device=args.device, dtype=getattr(torch, args.dtype)
    )
    engine = AudioEngine(encoder, device=args.device)
    engine.start()
    print(f"preset={preset.name} device={args.device} dtype={args.dtype} torch_threads={torch.get_num_threads()}")
    print(f"{'mode':<6} {'audio':>6} {'L':>4} {'eos→ready ms (median/max)':>26} {'speaking ms/s':>14} "
          f"{'non-streaming ms':>17}")
    try:
        for seconds in DURATIONS_S:
            spoken = speech(seconds)
            rng = np.random.default_rng(0)
            synthetic = (rng.standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)
            modes = [("ptt", spoken if spoken is not None else synthetic, run_push_to_talk)]
            if spoken is not None:
                modes.append(("vad", spoken, run_vad))
            for mode, samples, run in modes:
                run(engine, samples, args.realtime)  # warm-up
                readies = [run(engine, samples, args.realtime) for _ in range(args.repeats)]
                eos_ms = [r.eos_to_ready_ns / 1e6 for r in readies]
                speaking = readies[-1].timings[0].compute_ns / 1e6 / (readies[-1].duration_ms / 1e3)
                baseline = statistics.median(non_streaming_ms(engine, readies[-1].pcm16k) for _ in range(args.repeats))
                print(f"{mode:<6} {readies[-1].duration_ms / 1e3:>5.2f}s {readies[-1].embeddings.shape[0]:>4} "
                      f"{statistics.median(eos_ms):>18.2f} / {max(eos_ms):<6.2f} {speaking:>14.2f} {baseline:>17.2f}")
    finally:
        engine.stop()


if __name__ == "__main__":
    main()
