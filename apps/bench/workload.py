"""What `vita bench` sends: one scripted multi-turn conversation per session.

Three turn kinds:
* `text`   — a typed turn (`UserTurn.text`).
* `spoken` — 16 kHz mono PCM16 streamed at real-time pace as `audio` events (AudioAppend), ended by an
             `audio_commit` (push-to-talk) or by the server's VAD (trailing silence keeps streaming).
* `image`  — a typed turn with one image (`UserTurn.media`).

The built-in workload is text turns drawn from a fixed prompt list (`--mix` adds spoken / image turns,
synthesised here: espeak-ng speech when the binary exists, else a voiced test signal; a seeded PNG).
A workload file (`--workload`, JSON or YAML) scripts conversations explicitly:

    conversations:                       # session i replays conversations[i % len], turns cycling
      - - {kind: text, text: "Hello! Who are you?"}
        - {kind: spoken, audio: question.wav}          # any rate / width; resampled to 16 kHz mono
        - {kind: spoken, say: "What time is it?"}      # synthesised (espeak-ng if present)
        - {kind: image, text: "What is in this picture?", image: photo.jpg}
        - {kind: image, text: "Describe it."}          # a synthetic image

Everything is deterministic for a given `--seed`: the scripts, and the per-turn seed sent with every
turn (identical between the distributed stack and `--inprocess`).
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import subprocess
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TEXT, SPOKEN, IMAGE = "text", "spoken", "image"
TURN_KINDS = (TEXT, SPOKEN, IMAGE)

INPUT_SAMPLE_RATE_HZ = 16_000  # what spoken turns are streamed at (the audio service's native rate)
AUDIO_CHUNK_MS = 40  # one `audio` event per 40 ms of speech, sent at real-time pace
VAD_TRAILING_SILENCE_S = 1.5  # silence streamed after the speech when the server's VAD ends the turn
SYNTHETIC_IMAGE_SIZE = 448  # one InternViT tile
VOICED_THRESHOLD = 0.01  # -40 dBFS: quieter samples at the end of a clip are taken as silence

PROMPTS = (
    "Hello! Who are you?",
    "Tell me about the weather on Mars.",
    "What is the capital of France, and why is it famous?",
    "Can you explain how a rainbow forms?",
    "Write a short poem about the sea.",
    "What should I cook for dinner tonight?",
    "How do airplanes stay in the air?",
    "Give me three tips for learning a new language.",
    "Why is the sky blue?",
    "Tell me a story about a brave little robot.",
    "What is the difference between a virus and a bacterium?",
    "How far away is the Moon?",
    "Recommend a good book for a long train ride.",
    "What makes a cup of coffee taste bitter?",
    "Explain photosynthesis to a child.",
    "What are the rules of chess, briefly?",
)


@dataclass(frozen=True)
class BenchTurn:
    kind: str
    text: str = ""
    pcm16: bytes = b""  # spoken: mono PCM16 at INPUT_SAMPLE_RATE_HZ, speech then trailing silence
    speech_end_s: float = 0.0  # spoken: offset in `pcm16` where the speech ends
    image: bytes = b""  # image: encoded bytes (PNG/JPEG/WebP)
    max_tiles: int = 0  # image: 0 = the session's max_image_tiles

    @property
    def audio_s(self) -> float:
        return len(self.pcm16) / 2 / INPUT_SAMPLE_RATE_HZ


@dataclass(frozen=True)
class SessionScript:
    index: int
    turns: tuple[BenchTurn, ...]  # the warmup turns first, then the measured ones


@dataclass(frozen=True)
class Workload:
    sessions: tuple[SessionScript, ...]
    warmup: int  # leading turns of every session that are not measured
    reply_tokens: int  # max_reply_tokens of every turn
    seed: int
    speech_end: str = "commit"  # spoken turns end by "commit" (push-to-talk) or "vad"
    speech_output: bool = True  # False: text replies only (isolates the LLM)
    history_turns: int | None = None  # max_history_turns of the sessions; None = the server's default
    kinds: dict[str, int] = field(default_factory=dict)  # turns per kind, all sessions

    @property
    def has_spoken(self) -> bool:
        return any(t.kind == SPOKEN for s in self.sessions for t in s.turns)

    def turn_seed(self, session: int, turn: int) -> int:
        """The seed sent with a turn: a stable function of (--seed, session, turn) only."""
        digest = hashlib.sha256(f"vita-bench:{self.seed}:{session}:{turn}".encode()).digest()
        return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def parse_mix(spec: str) -> dict[str, float]:
    """"text=3,spoken=1,image=1" → weights per kind ("text" alone = text only)."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, weight = part.partition("=")
        if name not in TURN_KINDS:
            raise ValueError(f"unknown turn kind {name!r} in --mix; use {', '.join(TURN_KINDS)}")
        weights[name] = float(weight) if weight else 1.0
        if weights[name] < 0:
            raise ValueError(f"--mix weight of {name} must be >= 0")
    if not weights or sum(weights.values()) <= 0:
        raise ValueError("--mix needs at least one turn kind with a positive weight")
    return weights


def build_workload(
    *,
    sessions: int,
    turns: int,
    warmup: int,
    reply_tokens: int,
    seed: int,
    mix: str = TEXT,
    workload_file: Path | None = None,
    speech_end: str = "commit",
    speech_output: bool = True,
    history_turns: int | None = None,
) -> Workload:
    if sessions < 1 or turns < 1 or warmup < 0 or reply_tokens < 1:
        raise ValueError("sessions, turns and reply tokens must be >= 1, warmup >= 0")
    if history_turns is not None and history_turns < 0:
        raise ValueError("history_turns must be >= 0")
    if speech_end not in ("commit", "vad"):
        raise ValueError("speech_end must be 'commit' or 'vad'")
    per_session = warmup + turns
    trailing = VAD_TRAILING_SILENCE_S if speech_end == "vad" else 0.0
    synth = _Synth(trailing)
    if workload_file is not None:
        conversations = _load_file(workload_file, synth)
        scripts = []
        for i in range(sessions):
            conversation = conversations[i % len(conversations)]
            scripts.append(SessionScript(i, tuple(conversation[t % len(conversation)] for t in range(per_session))))
    else:
        weights = parse_mix(mix)
        kinds, kind_weights = list(weights), list(weights.values())
        scripts = []
        for i in range(sessions):
            rng = random.Random(f"{seed}:{i}")
            order = list(PROMPTS)
            rng.shuffle(order)
            script = []
            for t in range(per_session):
                kind = rng.choices(kinds, kind_weights)[0]
                text = order[t % len(order)]
                if kind == SPOKEN:
                    script.append(synth.spoken(text))
                elif kind == IMAGE:
                    script.append(BenchTurn(IMAGE, text=text, image=synthetic_image(rng.randrange(1 << 30))))
                else:
                    script.append(BenchTurn(TEXT, text=text))
            scripts.append(SessionScript(i, tuple(script)))
    counts = {k: sum(1 for s in scripts for t in s.turns if t.kind == k) for k in TURN_KINDS}
    return Workload(tuple(scripts), warmup, reply_tokens, seed, speech_end, speech_output, history_turns, counts)


# ----- files -----


def _load_file(path: Path, synth: "_Synth") -> list[list[BenchTurn]]:
    raw = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(raw)
    else:
        data = json.loads(raw)
    conversations = data.get("conversations") if isinstance(data, dict) else None
    if not conversations or not all(isinstance(c, list) and c for c in conversations):
        raise ValueError(f"{path}: expected {{conversations: [[turn, ...], ...]}} with non-empty conversations")
    return [[_turn_from_dict(t, path.parent, synth) for t in conversation] for conversation in conversations]


def _turn_from_dict(spec: dict, base: Path, synth: "_Synth") -> BenchTurn:
    kind = spec.get("kind", TEXT)
    if kind == TEXT:
        if not spec.get("text"):
            raise ValueError("a text turn needs `text`")
        return BenchTurn(TEXT, text=spec["text"])
    if kind == SPOKEN:
        if "audio" in spec:
            pcm = read_wav_16k(base / spec["audio"])
            samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
            return synth.with_trailing(pcm, float(spec.get("speech_end_s", voiced_end_s(samples))))
        if "say" in spec:
            return synth.spoken(spec["say"])
        raise ValueError("a spoken turn needs `audio` (a WAV file) or `say` (text to synthesise)")
    if kind == IMAGE:
        image = (base / spec["image"]).read_bytes() if "image" in spec else synthetic_image(len(spec.get("text", "")))
        return BenchTurn(IMAGE, text=spec.get("text", ""), image=image, max_tiles=int(spec.get("max_tiles", 0)))
    raise ValueError(f"unknown turn kind {kind!r}; use {', '.join(TURN_KINDS)}")


def read_wav_16k(path: Path) -> bytes:
    """A WAV file as 16 kHz mono PCM16."""
    with wave.open(str(path), "rb") as wav:
        rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
        frames = wav.readframes(wav.getnframes())
    if width != 2:
        raise ValueError(f"{path}: only 16-bit WAV is supported")
    samples = np.frombuffer(frames, dtype="<i2").reshape(-1, channels).mean(axis=1).astype(np.float32) / 32768
    return _to_pcm16(_resample(samples, rate))


def voiced_end_s(samples: np.ndarray, threshold: float = VOICED_THRESHOLD) -> float:
    """Where the speech ends: after the last sample above -40 dBFS (synthesisers pad their output with
    silence; end of speech → first audio is measured from the voice, not from the padding)."""
    loud = np.flatnonzero(np.abs(samples) > threshold)
    return float(loud[-1] + 1 if loud.size else len(samples)) / INPUT_SAMPLE_RATE_HZ


# ----- synthetic inputs -----


class _Synth:
    """Speech for spoken turns: espeak-ng when installed (real speech, which the server's VAD detects),
    else a voiced test signal (fine for push-to-talk, which needs no VAD). Cached per text."""

    def __init__(self, trailing_silence_s: float):
        self._trailing = trailing_silence_s
        self._espeak = shutil.which("espeak-ng")
        self._cache: dict[str, BenchTurn] = {}

    def spoken(self, text: str) -> BenchTurn:
        if text not in self._cache:
            samples = self._espeak_samples(text) if self._espeak else None
            if samples is None:
                samples = voiced_signal(text)
            self._cache[text] = self.with_trailing(_to_pcm16(samples), voiced_end_s(samples), text)
        return self._cache[text]

    def with_trailing(self, pcm16: bytes, speech_s: float, text: str = "") -> BenchTurn:
        silence = b"\x00\x00" * int(self._trailing * INPUT_SAMPLE_RATE_HZ)
        return BenchTurn(SPOKEN, text=text, pcm16=pcm16 + silence, speech_end_s=speech_s)

    def _espeak_samples(self, text: str) -> np.ndarray | None:
        try:
            out = subprocess.run([self._espeak, "--stdout", text], capture_output=True, timeout=30, check=True).stdout
            with wave.open(io.BytesIO(out), "rb") as wav:
                rate = wav.getframerate()
                samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float32) / 32768
        except (OSError, subprocess.SubprocessError, wave.Error):
            return None
        return _resample(samples, rate)


def voiced_signal(text: str) -> np.ndarray:
    """A speech-like test signal: a 120 Hz harmonic series, one 250 ms syllable per 4 characters."""
    seconds = max(1.0, 0.25 * len(text) / 4)
    t = np.arange(int(seconds * INPUT_SAMPLE_RATE_HZ)) / INPUT_SAMPLE_RATE_HZ
    voice = sum(np.sin(2 * np.pi * 120 * k * t) / k for k in range(1, 12))
    syllables = 0.5 * (1 - np.cos(2 * np.pi * 4 * t))
    return (0.3 * voice * syllables / np.abs(voice).max()).astype(np.float32)


def synthetic_image(seed: int, size: int = SYNTHETIC_IMAGE_SIZE) -> bytes:
    """A seeded PNG: colour gradients plus noise (decodes to a real RGB image)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, (x + y) / 2], axis=-1) * 200
    pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="PNG")
    return out.getvalue()


def _resample(samples: np.ndarray, rate: int) -> np.ndarray:
    if rate == INPUT_SAMPLE_RATE_HZ:
        return samples
    import soxr

    return soxr.resample(samples, rate, INPUT_SAMPLE_RATE_HZ).astype(np.float32)


def _to_pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
