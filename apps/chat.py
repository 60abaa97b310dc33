"""`vita chat`: one turn through the client SDK. Streams the reply text to the terminal as it arrives,
writes the reply speech to a WAV file, and reports time to first text and first audio as the client saw
them (from the moment its input was sent)."""

from __future__ import annotations

import asyncio
import sys
import wave
from dataclasses import dataclass, field
from pathlib import Path

import sdk

AUDIO_CHUNK_MS = 40


class ChatUsageError(ValueError):
    """Options that cannot work together; said before anything is sent."""


@dataclass
class TurnReport:
    result: sdk.TurnResult | None = None
    errors: list[sdk.TurnError] = field(default_factory=list)
    interrupted: str = ""  # why the turn was cut, if it was
    weights: str = ""

    @property
    def text(self) -> str:
        return self.result.text if self.result else ""

    @property
    def pcm(self) -> bytes:
        return self.result.pcm if self.result else b""

    @property
    def sample_rate_hz(self) -> int:
        return (self.result.sample_rate_hz if self.result else 0) or 24000

    @property
    def completed(self) -> sdk.TurnCompleted | None:
        return self.result.completed if self.result else None


def write_wav(path: Path, pcm: bytes, sample_rate_hz: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate_hz)
        wav.writeframes(pcm)


@dataclass
class SpokenInput:
    """An audio file as PCM16 mono at its own rate (the server resamples)."""

    pcm: bytes
    sample_rate_hz: int

    @classmethod
    def from_file(cls, path: Path) -> "SpokenInput":
        import numpy as np
        import soundfile

        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        mono = np.clip(samples[:, 0], -1.0, 1.0)
        return cls((mono * 32767.0).astype("<i2").tobytes(), int(rate))

    def chunks(self):
        step = self.sample_rate_hz * AUDIO_CHUNK_MS // 1000 * 2
        for offset in range(0, len(self.pcm), step):
            yield self.pcm[offset : offset + step]


async def run_turn(
    address: str,
    text: str = "",
    *,
    images: list[bytes] = (),
    video: bytes | None = None,
    spoken: SpokenInput | None = None,
    fast: bool = False,
    session_id: str | None = None,
    api_key: str | None = None,
    seed: int | None = None,
    max_reply_tokens: int | None = None,
    max_tiles: int = 0,
    echo=None,
) -> TurnReport:
    """One turn on a new (or given) session: typed text with optional images/video, or a spoken question
    streamed at real-time pace (`fast`: as fast as the stream takes it). `echo(text)` gets each delta.

    A typed turn carries `seed` and `max_reply_tokens` itself; a spoken turn is started by the server
    from the session's config, so a new session is created with them (a given session keeps its own)."""
    if spoken is not None and session_id is not None and (seed is not None or max_reply_tokens is not None):
        raise ChatUsageError("a spoken turn uses its session's seed and reply limit: "
                         "--seed/--max-reply-tokens with --audio apply to a new session, not to --session")
    media: list[sdk.Media] = [sdk.Image(data, max_tiles) for data in images]
    if video is not None:
        media.append(sdk.Video(video))
    audio = sdk.AudioFormat(spoken.sample_rate_hz, "pcm16") if spoken is not None else None
    report = TurnReport()
    async with sdk.AsyncClient(address, api_key=api_key) as client:
        if session_id is None:
            config = sdk.SessionConfig(seed=seed, max_reply_tokens=max_reply_tokens) if spoken else None
            session_id = (await client.create_session(config)).session_id
        async with client.conversation(session_id, audio=audio) as conv:
            report.weights = conv.ready.weights
            if spoken is None:
                turn = await conv.send_text(text, media=media, seed=seed, max_reply_tokens=max_reply_tokens)
            else:
                for chunk in spoken.chunks():
                    await conv.append_audio(chunk)
                    if not fast:
                        await asyncio.sleep(AUDIO_CHUNK_MS / 1000)
                # The end of the file ends the utterance even without trailing silence.
                turn = await conv.commit_audio(media=media)
            async for event in turn.events():
                if isinstance(event, sdk.TextDelta) and echo:
                    echo(event.text)
            try:
                report.result = await turn.result()
            except sdk.TurnFailed as failed:
                report.result, report.errors = failed.partial, [failed.partial.error]
            except sdk.TurnInterruptedError as cut:
                report.result, report.interrupted = cut.partial, cut.reason
    return report


def chat_main(args) -> int:
    def echo(delta: str) -> None:
        sys.stdout.write(delta)
        sys.stdout.flush()

    images = [Path(p).read_bytes() for p in args.image]
    video = Path(args.video).read_bytes() if args.video else None
    spoken = SpokenInput.from_file(Path(args.audio)) if args.audio else None
    try:
        report = asyncio.run(
            run_turn(
                args.address, args.text if not spoken else "", images=images, video=video, spoken=spoken,
                fast=args.fast, session_id=args.session, api_key=args.api_key, seed=args.seed,
                max_reply_tokens=args.max_reply_tokens, max_tiles=args.max_tiles, echo=echo,
            )
        )
    except ChatUsageError as error:
        print(f"vita chat: {error}", file=sys.stderr)
        return 2
    print()
    if report.errors or report.interrupted:
        for error in report.errors:
            print(f"error ({error.code.name}): {error.message}", file=sys.stderr)
        if report.interrupted:
            print(f"the turn was interrupted: {report.interrupted}", file=sys.stderr)
        return 1
    print_report(report, Path(args.out))
    return 0


def print_report(report: TurnReport, out: Path) -> None:
    result = report.result
    ttft, ttfa = result.client_ttft_ms, result.client_ttfa_ms
    if report.pcm:
        write_wav(out, report.pcm, report.sample_rate_hz)
    seconds = len(report.pcm) / 2 / report.sample_rate_hz
    print(f"weights served: {report.weights}" + ("  (random weights: the reply is noise)" if report.weights.startswith("random") else ""))
    print(f"time to first text token: {ttft:.1f} ms" if ttft is not None else "no text")
    print(f"time to first audio:      {ttfa:.1f} ms" if ttfa is not None else "no audio")
    if report.completed is not None:
        t = report.completed.timings
        print(f"server-side: ttft {t.ttft_ms:.1f} ms, ttfa {t.ttfa_ms:.1f} ms, turn {t.total_ms:.1f} ms, "
              f"{report.completed.reply_tokens} reply tokens, {report.completed.codec_tokens} codec tokens")
    if report.pcm:
        print(f"reply speech: {seconds:.2f} s at {report.sample_rate_hz} Hz written to {out}")
