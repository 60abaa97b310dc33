"""`vita chat`: a client of the public API. Sends one turn, streams the reply text to the terminal as it
arrives, writes the reply speech to a WAV file, and reports time to first text and first audio as the
client saw them (from the moment its input was sent)."""

from __future__ import annotations

import asyncio
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from shared.grpc_server import channel_options
from vita.assistant.v1 import assistant_pb2, assistant_pb2_grpc


@dataclass
class TurnReport:
    turn_id: str = ""
    text: str = ""
    pcm: bytearray = field(default_factory=bytearray)
    sample_rate_hz: int = 24000
    ttft_ms: float | None = None
    ttfa_ms: float | None = None
    completed: assistant_pb2.TurnCompleted | None = None
    errors: list[assistant_pb2.Error] = field(default_factory=list)
    weights: str = ""


def write_wav(path: Path, pcm: bytes, sample_rate_hz: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate_hz)
        wav.writeframes(pcm)


def metadata_for(api_key: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


AUDIO_CHUNK_MS = 40


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
    streamed at real-time pace (`fast`: as fast as the stream takes it). `echo(text)` gets each delta."""
    report = TurnReport()
    metadata = metadata_for(api_key)
    async with grpc.aio.insecure_channel(address, options=channel_options(64 * 1024 * 1024)) as channel:
        stub = assistant_pb2_grpc.AssistantStub(channel)
        if session_id is None:
            created = await stub.CreateSession(assistant_pb2.CreateSessionRequest(), metadata=metadata)
            session_id = created.session.session_id
        media = [assistant_pb2.MediaInput(image=data, max_tiles=max_tiles) for data in images]
        if video is not None:
            media.append(assistant_pb2.MediaInput(video=video))
        input_done = [0.0]

        async def events():
            start = assistant_pb2.ConverseStart(session_id=session_id)
            if spoken is not None:
                start.input_sample_rate_hz = spoken.sample_rate_hz
                start.input_encoding = assistant_pb2.AUDIO_ENCODING_PCM16
            yield assistant_pb2.ClientEvent(start=start)
            if spoken is None:
                turn = assistant_pb2.UserTurn(text=text, media=media)
                if seed is not None:
                    turn.seed = seed
                if max_reply_tokens is not None:
                    turn.max_reply_tokens = max_reply_tokens
                input_done[0] = time.perf_counter()
                yield assistant_pb2.ClientEvent(turn=turn)
            else:
                for chunk in spoken.chunks():
                    yield assistant_pb2.ClientEvent(audio=assistant_pb2.AudioAppend(data=chunk))
                    if not fast:
                        await asyncio.sleep(AUDIO_CHUNK_MS / 1000)
                input_done[0] = time.perf_counter()
                # End of the file ends the utterance even if it has no trailing silence.
                yield assistant_pb2.ClientEvent(audio_commit=assistant_pb2.AudioCommit(media=media))
            await finished.wait()

        finished = asyncio.Event()
        call = stub.Converse(events(), metadata=metadata)
        async for event in call:
            kind = event.WhichOneof("event")
            now_ms = (time.perf_counter() - input_done[0]) * 1000
            if kind == "ready":
                report.weights = event.ready.weights
            elif kind == "turn_started":
                report.turn_id = event.turn_id
            elif kind == "text_delta":
                if report.ttft_ms is None:
                    report.ttft_ms = now_ms
                report.text += event.text_delta.text
                if echo:
                    echo(event.text_delta.text)
            elif kind == "audio":
                if report.ttfa_ms is None:
                    report.ttfa_ms = now_ms
                report.pcm += event.audio.pcm
                report.sample_rate_hz = event.audio.sample_rate_hz
            elif kind == "error":
                report.errors.append(event.error)
                if event.turn_id or spoken is None:
                    break
            elif kind == "turn_completed":
                report.completed = event.turn_completed
                break
        finished.set()
        call.cancel()
    return report


def chat_main(args) -> int:
    def echo(delta: str) -> None:
        sys.stdout.write(delta)
        sys.stdout.flush()

    images = [Path(p).read_bytes() for p in args.image]
    video = Path(args.video).read_bytes() if args.video else None
    spoken = SpokenInput.from_file(Path(args.audio)) if args.audio else None
    report = asyncio.run(
        run_turn(
            args.address, args.text if not spoken else "", images=images, video=video, spoken=spoken,
            fast=args.fast, session_id=args.session, api_key=args.api_key, seed=args.seed,
            max_reply_tokens=args.max_reply_tokens, max_tiles=args.max_tiles, echo=echo,
        )
    )
    print()
    if report.errors:
        for error in report.errors:
            print(f"error (code {error.code}): {error.message}", file=sys.stderr)
        return 1
    print_report(report, Path(args.out))
    return 0


def print_report(report: TurnReport, out: Path) -> None:
    if report.pcm:
        write_wav(out, bytes(report.pcm), report.sample_rate_hz)
    seconds = len(report.pcm) / 2 / report.sample_rate_hz
    print(f"weights served: {report.weights}" + ("  (random weights: the reply is noise)" if report.weights.startswith("random") else ""))
    print(f"time to first text token: {report.ttft_ms:.1f} ms" if report.ttft_ms is not None else "no text")
    print(f"time to first audio:      {report.ttfa_ms:.1f} ms" if report.ttfa_ms is not None else "no audio")
    if report.completed is not None:
        t = report.completed.timings
        print(f"server-side: ttft {t.ttft_ms:.1f} ms, ttfa {t.ttfa_ms:.1f} ms, turn {t.total_ms:.1f} ms, "
              f"{report.completed.reply_tokens} reply tokens, {report.completed.codec_tokens} codec tokens")
    if report.pcm:
        print(f"reply speech: {seconds:.2f} s at {report.sample_rate_hz} Hz written to {out}")
