"""The audio service over real gRPC (loopback, port 0, in-process server, tiny preset): push-to-talk and VAD
streams with their events in order, EncodeClip equal to the stream path, every bad input as a precise
status with the service still serving, and cancellation freeing the stream."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import soundfile
import soxr
import torch
from prometheus_client import REGISTRY

import services.audio.rpc.clips as audio_clips
from services.audio.config import AudioSettings
from services.audio.rpc.messages import INTERNAL_MESSAGE
from services.audio.server import AudioApp
from services.audio.stream import AudioStream, expected_llm_tokens
from shared.grpc_server import MetricsInterceptor, channel_options
from shared.presets import TINY
from shared.settings import MiB, ServiceSettings
from shared.tensors import from_proto
from vita.audio.v1 import audio_pb2, audio_pb2_grpc
from vita.common.v1 import common_pb2

from .conftest import noise, silence

HIDDEN = TINY.audio.llm_hidden
# Small limits keep the over-the-limit payloads small.
LIMIT_MS = 20_000
SETTINGS = dict(
    max_batch_size=4, feature_threads=2, max_utterance_limit_ms=LIMIT_MS,
    max_clip_bytes=2 * MiB,
)
CTX = common_pb2.CallContext(session_id="s1", turn_id="t1")
PCM16 = audio_pb2.SAMPLE_ENCODING_PCM16
F32 = audio_pb2.SAMPLE_ENCODING_F32
INVALID = grpc.StatusCode.INVALID_ARGUMENT
# Streaming vs one-shot: fbank is bit-identical; only the per-chunk subsampling convolutions round differently.
STREAMING_TOLERANCE = 1e-5
CHUNK_MS = 40
TIMEOUT_S = 30


@dataclass
class Served:
    app: AudioApp
    server: grpc.aio.Server
    channel: grpc.aio.Channel
    stub: audio_pb2_grpc.AudioStub

    async def close(self) -> None:
        await self.channel.close()
        await self.server.stop(0)
        await self.app.close()


async def serve(load: bool = True, **settings: object) -> Served:
    """The service as `shared.grpc_server.serve` wires it, minus signals, health and /metrics."""
    common = ServiceSettings(preset="tiny", device="cpu", metrics_port=-1)
    app = AudioApp(common, AudioSettings(**{**SETTINGS, **settings}))
    options = channel_options(64 * MiB)
    server = grpc.aio.server(options=options, interceptors=[MetricsInterceptor(app.metrics)])
    app.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    if load:
        await app.load()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
    return Served(app, server, channel, audio_pb2_grpc.AudioStub(channel))


@pytest.fixture(scope="module")
async def audio():
    served = await serve()
    yield served
    await served.close()


# --------------------------------------------------------------------------------------------- helpers


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def pcm16(samples: np.ndarray) -> bytes:
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()


def f32(samples: np.ndarray) -> bytes:
    return np.asarray(samples, dtype="<f4").tobytes()


def wav(samples: np.ndarray, rate: int = 16000, fmt: str = "WAV") -> bytes:
    """A 16-bit file of exactly the samples `pcm16` sends (libsndfile would scale floats by 32767)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.frombuffer(pcm16(samples), dtype="<i2"), rate, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


def start(rate: int = 16000, encoding: int = PCM16, vad: audio_pb2.VadConfig | None = None,
          ctx: common_pb2.CallContext = CTX) -> audio_pb2.AudioInput:
    return audio_pb2.AudioInput(
        start=audio_pb2.StreamStart(
            ctx=ctx, format=audio_pb2.AudioFormat(sample_rate_hz=rate, encoding=encoding), vad=vad
        )
    )


def chunked(samples: np.ndarray, rate: int = 16000, encoding: int = PCM16) -> list[audio_pb2.AudioInput]:
    step = rate * CHUNK_MS // 1000
    to_bytes = pcm16 if encoding == PCM16 else f32
    return [
        audio_pb2.AudioInput(chunk=audio_pb2.PcmChunk(data=to_bytes(samples[i : i + step])))
        for i in range(0, len(samples), step)
    ]


def raw_chunk(data: bytes) -> audio_pb2.AudioInput:
    return audio_pb2.AudioInput(chunk=audio_pb2.PcmChunk(data=data))


COMMIT = audio_pb2.AudioInput(commit=audio_pb2.Commit())
VAD_ON = audio_pb2.VadConfig(enabled=True)


async def stream(stub, messages: list[audio_pb2.AudioInput]) -> list[audio_pb2.AudioOutput]:
    """Sends `messages`, half-closes, and returns every event until the server ends the stream.

    A test that expects the server to end the call early makes the offending message the last one: a
    client write racing the server's status fails client-side as INTERNAL in grpc.aio."""
    call = stub.StreamAudio(timeout=TIMEOUT_S)
    try:
        for message in messages:
            await call.write(message)
        await call.done_writing()
    except asyncio.InvalidStateError:
        pass  # the server already ended the call; its status comes with the read below
    return [event async for event in call]


def kinds(events: list[audio_pb2.AudioOutput]) -> list[str]:
    return [event.WhichOneof("event") for event in events]


def clip_request(pcm: bytes | None = None, file: bytes | None = None, rate: int = 16000, encoding: int = PCM16,
                 ctx: common_pb2.CallContext = CTX) -> audio_pb2.EncodeClipRequest:
    request = audio_pb2.EncodeClipRequest(ctx=ctx, format=audio_pb2.AudioFormat(sample_rate_hz=rate, encoding=encoding))
    if file is not None:
        request.file = file
    if pcm is not None:
        request.pcm = pcm
    return request


def spoken_dialogue(speak, *phrases: str) -> np.ndarray:
    parts = [silence(0.4)]
    for phrase in phrases:
        parts += [speak(phrase), silence(1.0)]
    return np.concatenate(parts)


async def assert_serving(stub) -> None:
    """A good stream and a good clip still work."""
    events = await stream(stub, [start(), *chunked(noise(0.3, 0.1, seed=3)), COMMIT])
    assert kinds(events) == ["speech_started", "speech_stopped", "utterance"]
    reply = await stub.EncodeClip(clip_request(pcm16(noise(0.3, 0.1, seed=3))), timeout=TIMEOUT_S)
    assert list(reply.embeddings.shape) == [expected_llm_tokens(4800), HIDDEN]


async def eventually(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def check_utterance(event: audio_pb2.AudioOutput, index: int, num_samples: int) -> torch.Tensor:
    utterance = event.utterance
    assert utterance.index == index
    assert len(utterance.pcm16k) == 2 * num_samples
    assert utterance.duration_ms == round(num_samples / 16)
    assert utterance.eos_to_ready_ns > 0
    assert [t.stage for t in utterance.timings] == ["audio.subsample_while_speaking", "audio.encode"]
    embeddings = from_proto(utterance.embeddings)
    assert tuple(embeddings.shape) == (expected_llm_tokens(num_samples), HIDDEN)
    assert torch.isfinite(embeddings).all()
    return embeddings


# ------------------------------------------------------------------------------------------ happy path


async def test_describe(audio: Served) -> None:
    reply = await audio.stub.Describe(audio_pb2.DescribeRequest(), timeout=10)
    assert reply.hidden_size == HIDDEN and reply.tokens_per_second == pytest.approx(12.5)
    assert (reply.weights.source, reply.weights.name, reply.weights.dtype, reply.weights.device) == (
        "random", "tiny", "float32", "cpu"
    )


@pytest.mark.parametrize(("rate", "encoding"), [(16000, PCM16), (48000, F32)])
async def test_push_to_talk_utterance_equals_encode_clip(audio: Served, rate: int, encoding: int) -> None:
    clip16k = noise(1.3, 0.1, seed=5)
    samples = clip16k if rate == 16000 else soxr.resample(clip16k, 16000, rate).astype(np.float32)
    ready_before = sample("vita_audio_utterances_total", outcome="ready")
    eos_before = sample("vita_audio_eos_to_ready_seconds_count")
    seconds_before = sample("vita_audio_received_audio_seconds_total")

    events = await stream(audio.stub, [start(rate, encoding), *chunked(samples, rate, encoding), COMMIT])
    assert kinds(events) == ["speech_started", "speech_stopped", "utterance"]
    assert events[0].speech_started.offset_ms == 0
    num_samples = len(events[2].utterance.pcm16k) // 2
    if rate == 16000:
        assert num_samples == len(clip16k) and events[2].utterance.pcm16k == pcm16(clip16k)
    assert events[1].speech_stopped.offset_ms == round(num_samples / 16)
    streamed = check_utterance(events[2], 0, num_samples)
    assert sample("vita_audio_utterances_total", outcome="ready") == ready_before + 1
    assert sample("vita_audio_eos_to_ready_seconds_count") == eos_before + 1
    assert sample("vita_audio_received_audio_seconds_total") == pytest.approx(seconds_before + len(samples) / rate)

    # The same audio as one clip, in the declared format and (at 16 kHz) as a WAV file.
    requests = [clip_request(pcm16(samples) if encoding == PCM16 else f32(samples), rate=rate, encoding=encoding)]
    if rate == 16000:
        requests.append(clip_request(file=wav(clip16k)))
    for request in requests:
        reply = await audio.stub.EncodeClip(request, timeout=TIMEOUT_S)
        assert reply.pcm16k == events[2].utterance.pcm16k
        assert reply.duration_ms == round(num_samples / 16)
        assert [t.stage for t in reply.timings] == ["audio.features", "audio.encode"]
        assert all(t.compute_ns > 0 for t in reply.timings)
        assert (from_proto(reply.embeddings) - streamed).abs().max().item() <= STREAMING_TOLERANCE


async def test_vad_stream_of_real_speech(audio: Served, speak) -> None:
    samples = spoken_dialogue(speak, "Hello there, how are you today?", "Tell me a story.")
    events = await stream(audio.stub, [start(vad=VAD_ON), *chunked(samples)])
    assert kinds(events) == ["speech_started", "speech_stopped", "utterance"] * 2
    for index in range(2):
        started, stopped, utterance = events[3 * index : 3 * index + 3]
        assert started.speech_started.offset_ms < stopped.speech_stopped.offset_ms
        num_samples = len(utterance.utterance.pcm16k) // 2
        streamed = check_utterance(utterance, index, num_samples)
        # History re-encode: the utterance's own PCM gives the same embeddings.
        reply = await audio.stub.EncodeClip(clip_request(utterance.utterance.pcm16k), timeout=TIMEOUT_S)
        assert (from_proto(reply.embeddings) - streamed).abs().max().item() <= STREAMING_TOLERANCE
    assert events[3].speech_started.offset_ms >= events[1].speech_stopped.offset_ms


async def test_half_close_while_speaking_finishes_the_utterance(audio: Served, speak) -> None:
    samples = np.concatenate([silence(0.3), speak("What time is it in Tokyo?")])  # no pause at the end
    events = await stream(audio.stub, [start(vad=VAD_ON), *chunked(samples)])
    assert kinds(events) == ["speech_started", "speech_stopped", "utterance"]
    assert events[1].speech_stopped.offset_ms == round(len(samples) / 16)


async def test_silence_gives_no_events(audio: Served) -> None:
    assert await stream(audio.stub, [start(vad=VAD_ON), *chunked(silence(2.0)), raw_chunk(b"")]) == []


async def test_clipped_audio_is_served(audio: Served) -> None:
    square = np.where(np.sin(2 * np.pi * 200 * np.arange(16000) / 16000) >= 0, 1.0, -1.0).astype(np.float32)
    for encoding, samples in ((PCM16, square * 1.5), (F32, square * 1.5)):  # pcm16 saturates; f32 overshoots
        events = await stream(audio.stub, [start(encoding=encoding), *chunked(samples, encoding=encoding), COMMIT])
        assert kinds(events) == ["speech_started", "speech_stopped", "utterance"]
        check_utterance(events[2], 0, 16000)


async def test_too_long_push_to_talk_is_dropped_and_the_stream_goes_on(audio: Served) -> None:
    vad = audio_pb2.VadConfig(enabled=False, min_utterance_ms=200, max_utterance_ms=1000)
    too_long_before = sample("vita_audio_utterances_total", outcome="too_long")
    messages = [
        start(vad=vad),
        *chunked(noise(1.5, 0.1, seed=1)), COMMIT,  # cut at 1 s; the rest is ignored until the commit
        *chunked(noise(0.5, 0.1, seed=2)), COMMIT,  # the next utterance is served
        COMMIT,  # nothing since the last commit
    ]
    events = await stream(audio.stub, messages)
    assert kinds(events) == [
        "speech_started", "speech_stopped", "dropped",
        "dropped",  # the commit that ends the discarded audio is answered
        "speech_started", "speech_stopped", "utterance",
        "dropped",
    ]
    assert (events[2].dropped.reason, events[2].dropped.duration_ms) == (audio_pb2.DROP_REASON_TOO_LONG, 1000)
    assert events[1].speech_stopped.offset_ms == 1000
    assert events[3].dropped.reason == audio_pb2.DROP_REASON_EMPTY
    check_utterance(events[6], 2, 8000)
    assert events[7].dropped.reason == audio_pb2.DROP_REASON_EMPTY
    assert sample("vita_audio_utterances_total", outcome="too_long") == too_long_before + 1


async def test_never_ending_speech_is_cut_as_too_long(audio: Served, speak) -> None:
    monologue = speak("This sentence keeps going for quite a while, longer than the limit allows.")
    vad = audio_pb2.VadConfig(enabled=True, min_utterance_ms=500, max_utterance_ms=2000)
    question = speak("What time is it?")
    samples = np.concatenate([silence(0.3), monologue, silence(1.5), question, silence(1.0)])
    events = await stream(audio.stub, [start(vad=vad), *chunked(samples)])
    assert kinds(events) == [
        "speech_started", "speech_stopped", "dropped",  # the monologue
        "speech_started", "speech_stopped", "utterance",  # the question after the pause
    ]
    assert events[1].speech_stopped.offset_ms - events[0].speech_started.offset_ms == 2000
    assert (events[2].dropped.reason, events[2].dropped.duration_ms) == (audio_pb2.DROP_REASON_TOO_LONG, 2000)


async def test_utterance_waits_in_order_while_audio_intake_goes_on(audio: Served, monkeypatch) -> None:
    """The first utterance's encode is held; the server meanwhile takes the second utterance's audio and
    commit, but sends nothing after the first speech_stopped until that utterance is out."""
    encoder = audio.app.engine.encoder
    real = encoder.encode_subsampled
    release = threading.Event()

    def held(*args, **kwargs):
        release.wait(TIMEOUT_S)
        return real(*args, **kwargs)

    commits = []
    real_commit = AudioStream.commit

    def counted_commit(self):
        events = real_commit(self)
        commits.append(len(events))
        return events

    monkeypatch.setattr(encoder, "encode_subsampled", held)
    monkeypatch.setattr(AudioStream, "commit", counted_commit)
    call = audio.stub.StreamAudio(timeout=TIMEOUT_S)
    received: list[audio_pb2.AudioOutput] = []

    async def consume():
        async for event in call:
            received.append(event)

    consumer = asyncio.create_task(consume())
    try:
        await call.write(start())
        for message in [*chunked(noise(0.4, 0.1, seed=1)), COMMIT, *chunked(noise(0.3, 0.1, seed=2)), COMMIT]:
            await call.write(message)
        await eventually(lambda: len(commits) == 2)  # both commits were processed while encode 0 is held
        await asyncio.sleep(0.1)
        assert kinds(received) == ["speech_started", "speech_stopped"]
    finally:
        release.set()
    await call.done_writing()
    await consumer
    assert kinds(received) == ["speech_started", "speech_stopped", "utterance"] * 2
    assert [received[2].utterance.index, received[5].utterance.index] == [0, 1]


# ----------------------------------------------------------------------------------------- bad input


BAD_STARTS = {
    "rate missing": (lambda: [start(rate=0)], "sample rate is missing"),
    "rate 1 Hz": (lambda: [start(rate=1)], "use 8000..192000 Hz"),
    "rate 10 MHz": (lambda: [start(rate=10_000_000)], "use 8000..192000 Hz"),
    "rate negative": (lambda: [start(rate=-16000)], "use 8000..192000 Hz"),
    "encoding missing": (lambda: [start(encoding=0)], "format.encoding is missing"),
    "encoding unknown": (lambda: [start(encoding=7)], "format.encoding 7 is not a known sample encoding"),
    "start threshold": (
        lambda: [start(vad=audio_pb2.VadConfig(enabled=True, start_threshold=1.5))], "vad.start_threshold"
    ),
    "end above start": (
        lambda: [start(vad=audio_pb2.VadConfig(enabled=True, start_threshold=0.5, end_threshold=0.6))],
        "vad.end_threshold",
    ),
    "negative silence": (lambda: [start(vad=audio_pb2.VadConfig(min_silence_ms=-1))], "vad.min_silence_ms"),
    "max over the limit": (
        lambda: [start(vad=audio_pb2.VadConfig(max_utterance_ms=LIMIT_MS + 1))], f"limit of {LIMIT_MS} ms"
    ),
    "no session": (lambda: [start(ctx=common_pb2.CallContext())], "session_id is required"),
    "chunk first": (lambda: [raw_chunk(b"\0\0")], "the first message must be `start`"),
    "nothing": (lambda: [], "ended before its `start` message"),
    "start twice": (lambda: [start(), start()], "`start` may only be the first message"),
    "empty message": (lambda: [start(), audio_pb2.AudioInput()], "must set `chunk` or `commit`"),
}


@pytest.mark.parametrize(("build", "text"), BAD_STARTS.values(), ids=BAD_STARTS.keys())
async def test_bad_stream_start_is_invalid_argument(audio: Served, build, text: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream(audio.stub, build())
    assert caught.value.code() == INVALID, caught.value.details()
    assert text in caught.value.details()
    await assert_serving(audio.stub)


BAD_CHUNKS = {
    "odd byte count": (PCM16, b"\x01\x02\x03", "3 bytes is not a whole number of pcm16 samples"),
    "nan": (F32, f32(np.array([0.1, np.nan, 0.2])), "NaN or infinity (first at sample 1)"),
    "inf": (F32, f32(np.array([np.inf, 0.0])), "NaN or infinity"),
    "integer-scaled f32": (F32, f32(np.full(160, 1000.0)), "far outside [-1, 1]"),
    "over the size limit": (PCM16, bytes(40_000), "at most 32000 bytes (1000 ms of pcm16 at 16000 Hz)"),
}


@pytest.mark.parametrize(("encoding", "data", "text"), BAD_CHUNKS.values(), ids=BAD_CHUNKS.keys())
async def test_bad_chunk_aborts_the_stream_after_its_events(audio: Served, encoding: int, data: bytes,
                                                            text: str) -> None:
    invalid_before = sample("vita_audio_streams_total", outcome="invalid")
    call = audio.stub.StreamAudio(timeout=TIMEOUT_S)
    await call.write(start(encoding=encoding))
    for message in chunked(noise(0.2, 0.1), encoding=encoding):
        await call.write(message)
    await call.write(raw_chunk(data))
    first = await call.read()
    assert first.WhichOneof("event") == "speech_started"  # the events before the bad chunk still arrive
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == INVALID
    assert caught.value.details().startswith("audio chunk 5 (0.20 s into the stream)")
    assert text in caught.value.details()
    await eventually(lambda: sample("vita_audio_streams_total", outcome="invalid") == invalid_before + 1)
    assert audio.app.servicer.open_streams == 0
    await assert_serving(audio.stub)


def _corrupt_wav() -> bytes:
    data = bytearray(wav(noise(0.5, 0.1)))
    data[12:36] = b"\xff" * 24  # the fmt chunk
    return bytes(data)


BAD_CLIPS = {
    "corrupt wav": (lambda: clip_request(file=_corrupt_wav()), "could not be decoded"),
    "truncated wav": (lambda: clip_request(file=wav(noise(1.0, 0.1))[:20_000]), "the WAV file is truncated"),
    "unsupported codec": (lambda: clip_request(file=wav(noise(0.5, 0.1), fmt="AIFF")), "this one is AIFF"),
    "not audio": (lambda: clip_request(file=b"hello, I am plain text" * 20), "could not be decoded"),
    "empty file": (lambda: clip_request(file=b""), "the audio file is empty"),
    "empty pcm": (lambda: clip_request(pcm=b""), "no PCM bytes were sent"),
    "bare RIFF tag": (lambda: clip_request(file=b"RIFF"), "could not be decoded"),
    "no audio": (lambda: clip_request(), "no audio"),
    "too short pcm": (lambda: clip_request(pcm16(noise(0.05, 0.1))), "at least 85 ms of audio is needed"),
    "too short wav": (lambda: clip_request(file=wav(noise(0.05, 0.1))), "at least 85 ms"),
    "too long pcm": (lambda: clip_request(bytes(2 * 16 * (LIMIT_MS + 1000))), "the limit is 20 s per clip"),
    "too long wav": (lambda: clip_request(file=wav(np.zeros(16 * (LIMIT_MS + 1000)))), "the limit is 20 s per clip"),
    "too long 8 kHz wav": (
        lambda: clip_request(file=wav(np.zeros(8 * (LIMIT_MS + 1000)), rate=8000)), "the limit is 20 s per clip"
    ),
    "over the byte limit": (lambda: clip_request(file=bytes(2 * MiB + 1)), "the limit is 2 MiB"),
    "rate missing": (lambda: clip_request(pcm16(noise(0.5, 0.1)), rate=0), "sample rate is missing"),
    "rate 10 MHz": (lambda: clip_request(pcm16(noise(0.5, 0.1)), rate=10_000_000), "use 8000..192000 Hz"),
    "encoding missing": (lambda: clip_request(pcm16(noise(0.5, 0.1)), encoding=0), "format.encoding is missing"),
    "odd bytes": (lambda: clip_request(b"\0" * 4801), "not a whole number of pcm16 samples"),
    "nan": (lambda: clip_request(f32(np.full(4000, np.nan)), encoding=F32), "NaN or infinity"),
    "no session": (lambda: clip_request(pcm16(noise(0.5, 0.1)), ctx=common_pb2.CallContext()), "session_id"),
}


@pytest.mark.parametrize(("build", "text"), BAD_CLIPS.values(), ids=BAD_CLIPS.keys())
async def test_bad_clip_is_invalid_argument(audio: Served, build, text: str) -> None:
    invalid_before = sample("vita_audio_clips_total", outcome="invalid")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await audio.stub.EncodeClip(build(), timeout=TIMEOUT_S)
    assert caught.value.code() == INVALID, caught.value.details()
    assert text in caught.value.details()
    assert sample("vita_audio_clips_total", outcome="invalid") == invalid_before + 1
    await assert_serving(audio.stub)


async def test_unexpected_errors_are_internal_without_details(audio: Served, monkeypatch, caplog) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("secret path /srv/weights")

    monkeypatch.setattr(audio_clips, "clip_for_encoding", broken)
    monkeypatch.setattr(AudioStream, "commit", broken)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await audio.stub.EncodeClip(clip_request(pcm16(noise(0.5, 0.1))), timeout=TIMEOUT_S)
    assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream(audio.stub, [start(), *chunked(noise(0.3, 0.1)), COMMIT])
    assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    assert "secret path" in caplog.text  # in the log only
    monkeypatch.undo()
    await assert_serving(audio.stub)


async def test_stream_limit_is_resource_exhausted(audio: Served, monkeypatch) -> None:
    monkeypatch.setattr(audio.app.servicer._settings, "max_streams", 1)
    first = audio.stub.StreamAudio(timeout=TIMEOUT_S)
    await first.write(start())
    await eventually(lambda: audio.app.servicer.open_streams == 1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream(audio.stub, [start()])
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit of 1 open streams" in caught.value.details()
    await first.done_writing()
    assert [event async for event in first] == []
    assert await stream(audio.stub, [start()]) == []


# ------------------------------------------------------------------------------------------ cancelling


async def test_cancel_mid_stream_frees_the_stream(audio: Served) -> None:
    active_before = sample("vita_audio_active_streams")
    cancelled_before = sample("vita_audio_streams_total", outcome="cancelled")
    dropped_before = sample("vita_audio_utterances_total", outcome="cancelled")
    seconds_before = sample("vita_audio_received_audio_seconds_total")
    call = audio.stub.StreamAudio(timeout=TIMEOUT_S)
    await call.write(start())
    for message in chunked(noise(0.5, 0.1)):
        await call.write(message)
    assert (await call.read()).WhichOneof("event") == "speech_started"
    # Cancel once the server holds all of it: a cancel that gRPC reports as "end of input" first would
    # otherwise flush a few chunks as a too-short utterance instead of a cancelled one.
    await eventually(lambda: sample("vita_audio_received_audio_seconds_total") >= seconds_before + 0.5 - 1e-9)
    assert audio.app.servicer.open_streams == 1
    assert sample("vita_audio_active_streams") == active_before + 1
    call.cancel()
    await eventually(lambda: audio.app.servicer.open_streams == 0)
    await eventually(lambda: sample("vita_audio_streams_total", outcome="cancelled") == cancelled_before + 1)
    # The utterance in progress is dropped ("cancel drops") on a feature thread.
    await eventually(lambda: sample("vita_audio_utterances_total", outcome="cancelled") == dropped_before + 1)
    assert sample("vita_audio_active_streams") == active_before
    await assert_serving(audio.stub)


async def test_loading_gate_and_stopped_engine_are_unavailable() -> None:
    served = await serve(load=False)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await served.stub.Describe(audio_pb2.DescribeRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        # The gate answers before reading anything: a client write would race that status (and fail
        # client-side as INTERNAL), so this call only reads.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            _ = [event async for event in served.stub.StreamAudio(timeout=TIMEOUT_S)]
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        await served.app.load()
        await assert_serving(served.stub)
        served.app.engine.stop()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await served.stub.EncodeClip(clip_request(pcm16(noise(0.3, 0.1))), timeout=TIMEOUT_S)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream(served.stub, [start(), raw_chunk(pcm16(noise(0.3, 0.1)))])
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in caught.value.details()
    finally:
        await served.close()
