"""The vision service over real gRPC (loopback, port 0, in-process server, tiny preset): chunks per tile,
every bad input as a precise status with the service still serving, cancellation reaching the engine."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client import REGISTRY

import services.vision.server as vision_server
from services.vision.config import VisionSettings
from services.vision.images import TilingOptions, image_to_tiles, plan_tiles
from services.vision.server import INTERNAL_MESSAGE, VisionApp
from services.vision.weights import load_vision
from shared.grpc_server import MetricsInterceptor, channel_options
from shared.presets import TINY
from shared.retry_hint import retry_after_ms
from shared.settings import MiB, ServiceSettings
from shared.tensors import from_proto
from tests.vision.media import audio_only_mp4, encode_image, png_from_header, video_bytes
from vita.common.v1 import common_pb2
from vita.vision.v1 import vision_pb2, vision_pb2_grpc

HIDDEN = TINY.vision.llm_hidden
TOKENS = TINY.vision.tokens_per_tile
SETTINGS = dict(max_batch_size=4, max_image_bytes=2 * MiB, max_video_bytes=1 * MiB, max_camera_frames=8)
CTX = common_pb2.CallContext(session_id="s1", turn_id="t1")
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@dataclass
class Served:
    app: VisionApp
    server: grpc.aio.Server
    channel: grpc.aio.Channel
    stub: vision_pb2_grpc.VisionStub
    address: str

    async def close(self) -> None:
        await self.channel.close()
        await self.server.stop(0)
        await self.app.close()


async def serve(load: bool = True, **common: object) -> Served:
    """The service as `shared.grpc_server.serve` wires it, minus signals, health and /metrics."""
    app = VisionApp(ServiceSettings(preset="tiny", device="cpu", metrics_port=-1, **common), VisionSettings(**SETTINGS))
    options = channel_options(64 * MiB)
    server = grpc.aio.server(options=options, interceptors=[MetricsInterceptor(app.metrics)])
    app.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    if load:
        await app.load()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
    return Served(app, server, channel, vision_pb2_grpc.VisionStub(channel), f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
async def vision():
    served = await serve()
    yield served
    await served.close()


@pytest.fixture(scope="module")
def model():
    return load_vision(TINY.vision, seed=TINY.init_seed, device="cpu", dtype=torch.float32)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth colour ramps with a little noise: real-looking content that still compresses well."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    base = (x * np.array([1.0, 0.3, 0.6]) + y * np.array([0.2, 1.0, 0.4])) / 1.6 + seed * 17
    pixels = (base % 256 + rng.integers(0, 4, (height, width, 3))).clip(0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def noise(width: int = 120, height: int = 80) -> Image.Image:
    """Incompressible pixels: a cut halfway through the file lands in the image data, not the header."""
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8))


SMALL_PNG = encode_image(photo(64, 48), "PNG")


def image_request(data: bytes, max_tiles: int = 0, ctx=CTX) -> vision_pb2.EncodeImageRequest:
    return vision_pb2.EncodeImageRequest(ctx=ctx, image=common_pb2.MediaBlob(data=data), max_tiles=max_tiles)


def video_request(data: bytes, ctx=CTX) -> vision_pb2.EncodeVideoRequest:
    return vision_pb2.EncodeVideoRequest(ctx=ctx, video=common_pb2.MediaBlob(data=data))


def frames_request(frames: list[tuple[int, bytes]], ctx=CTX) -> vision_pb2.EncodeFramesRequest:
    return vision_pb2.EncodeFramesRequest(
        ctx=ctx, frames=[vision_pb2.CameraFrame(timestamp_ms=stamp, jpeg=jpeg) for stamp, jpeg in frames]
    )


def camera(stamps_ms: list[int]) -> list[tuple[int, bytes]]:
    return [(stamp, encode_image(photo(64, 48, seed=i), "JPEG")) for i, stamp in enumerate(stamps_ms)]


async def collect(call) -> list[vision_pb2.EmbeddingChunk]:
    return [chunk async for chunk in call]


def check_chunks(chunks: list[vision_pb2.EmbeddingChunk], count: int, dtype: str = "float32") -> torch.Tensor:
    assert [c.index for c in chunks] == list(range(count))
    assert all(c.total == count for c in chunks)
    for chunk in chunks:
        assert chunk.embeddings.dtype == dtype and list(chunk.embeddings.shape) == [TOKENS, HIDDEN]
    # Timings come with the last chunk only.
    assert all(not c.timings for c in chunks[:-1])
    stages = {t.stage: t for t in chunks[-1].timings}
    assert list(stages) == ["vision.decode", "vision.queue", "vision.encode"]
    assert stages["vision.decode"].compute_ns > 0 and stages["vision.encode"].compute_ns > 0
    assert stages["vision.queue"].queue_ns >= 0
    return torch.stack([from_proto(c.embeddings) for c in chunks])


async def assert_serving(stub: vision_pb2_grpc.VisionStub) -> None:
    check_chunks(await collect(stub.EncodeImage(image_request(SMALL_PNG), timeout=30)), 1)


# ------------------------------------------------------------------------------------------ happy path


async def test_describe(vision: Served) -> None:
    reply = await vision.stub.Describe(vision_pb2.DescribeRequest(), timeout=10)
    assert (reply.tokens_per_tile, reply.hidden_size) == (TOKENS, HIDDEN)
    assert (reply.weights.source, reply.weights.name, reply.weights.dtype, reply.weights.device) == (
        "random", "tiny", "float32", "cpu"
    )


@pytest.mark.parametrize(
    ("fmt", "size", "max_tiles"),
    [("PNG", (300, 200), 0), ("JPEG", (896, 448), 6), ("PNG", (1344, 896), 12)],
)
async def test_image_streams_one_chunk_per_tile(vision: Served, model, fmt: str, size: tuple[int, int],
                                                max_tiles: int) -> None:
    data = encode_image(photo(*size), fmt)
    options = TilingOptions(max_tiles=max(max_tiles, 1))
    expected_tiles = plan_tiles(*size, options).num_tiles  # grid + thumbnail (none for a single tile)
    tiles_before = sample("vita_vision_tiles_total", kind="image")
    chunks = await collect(vision.stub.EncodeImage(image_request(data, max_tiles), timeout=60))
    rows = check_chunks(chunks, expected_tiles)
    assert expected_tiles == {0: 1, 6: 3, 12: 7}[max_tiles]
    with torch.inference_mode():
        reference = model(image_to_tiles(data, options).pixel_values)
    assert (rows - reference).abs().max().item() < 1e-4  # same rows, in tile order
    assert sample("vita_vision_tiles_total", kind="image") == tiles_before + expected_tiles
    assert sample("vita_vision_batch_size_count") > 0


async def test_concurrent_requests_share_steps_and_get_their_own_rows(vision: Served, model) -> None:
    images = [encode_image(photo(896, 448, seed=seed), "JPEG") for seed in (1, 2, 3)]  # 2 tiles + thumbnail each
    before = vision.app.engine.stats()
    results = await asyncio.gather(
        *(collect(vision.stub.EncodeImage(image_request(data, 6), timeout=60)) for data in images)
    )
    with torch.inference_mode():
        for data, chunks in zip(images, results, strict=True):
            reference = model(image_to_tiles(data, TilingOptions(max_tiles=6)).pixel_values)
            assert (check_chunks(chunks, 3) - reference).abs().max().item() < 1e-4
    after = vision.app.engine.stats()
    assert after.tiles - before.tiles == 9 and after.requests_completed - before.requests_completed == 3


async def test_video_gives_one_chunk_per_sampled_frame(vision: Served) -> None:
    data = video_bytes(fmt="mp4", codec="libx264", seconds=2, fps=10)
    chunks = await collect(vision.stub.EncodeVideo(video_request(data), timeout=60))
    check_chunks(chunks, 4)  # a clip under 4 s gives 4 frames at k·D/4
    assert [c.timestamp_ms for c in chunks] == [0, 500, 1000, 1500]


async def test_camera_frames_are_one_video(vision: Served) -> None:
    chunks = await collect(vision.stub.EncodeFrames(frames_request(camera([1000, 1500, 2000])), timeout=60))
    check_chunks(chunks, 4)
    # Times within the clip (from its first frame); a 1.5 s window of 3 frames repeats its last one.
    assert [c.timestamp_ms for c in chunks] == [0, 500, 1000, 1000]


async def test_bfloat16_embeddings_and_stopped_engine_and_loading_gate() -> None:
    served = await serve(load=False, dtype="bfloat16")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await served.stub.Describe(vision_pb2.DescribeRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        await served.app.load()
        assert (await served.stub.Describe(vision_pb2.DescribeRequest(), timeout=10)).weights.dtype == "bfloat16"
        # The served dtype goes on the wire as it is (bf16 on GPU): half the bytes of fp32.
        chunks = await collect(served.stub.EncodeImage(image_request(SMALL_PNG), timeout=30))
        check_chunks(chunks, 1, dtype="bfloat16")
        assert len(chunks[0].embeddings.data) == TOKENS * HIDDEN * 2
        served.app.engine.stop()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(served.stub.EncodeImage(image_request(SMALL_PNG), timeout=30))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await served.close()


# ----------------------------------------------------------------------------------------- bad input


def _corrupt_jpeg() -> bytes:
    data = bytearray(encode_image(noise(), "JPEG"))
    data[3:60] = bytes(57)  # wipe the marker segments after SOI
    return bytes(data)


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


NO_CTX = common_pb2.CallContext()
BAD_IMAGES = {
    "corrupt jpeg": (lambda: image_request(_corrupt_jpeg()), "corrupt", "damaged"),
    "truncated jpeg": (lambda: image_request(_truncated(encode_image(noise(), "JPEG"))), "corrupt", "truncated"),
    "truncated png": (lambda: image_request(_truncated(encode_image(noise(), "PNG"))), "corrupt", "truncated"),
    "not an image": (lambda: image_request(b"hello, I am plain text" * 10), "unsupported", "JPEG, PNG, WebP or GIF"),
    "bmp": (lambda: image_request(encode_image(photo(32, 32), "BMP")), "unsupported", "BMP"),
    "empty": (lambda: image_request(b""), "empty", "empty"),
    "0x0": (lambda: image_request(png_from_header(0, 0)), "bad_dimensions", "0×0"),
    "1x4000": (lambda: image_request(png_from_header(1, 4000)), "bad_dimensions", "aspect ratio"),
    "40000x1": (lambda: image_request(png_from_header(40000, 1)), "bad_dimensions", "aspect ratio"),
    "bomb": (lambda: image_request(png_from_header(10_000, 10_000, bit_depth=1)), "too_large", "megapixels"),
    "over the byte limit": (
        lambda: image_request(SMALL_PNG + bytes(2 * MiB)), "too_large", "the limit is 2.0 MiB"
    ),
    "13 tiles": (lambda: image_request(SMALL_PNG, max_tiles=13), None, "max_tiles must be between 1 and 12"),
    "negative tiles": (lambda: image_request(SMALL_PNG, max_tiles=-1), None, "max_tiles must be between 1 and 12"),
    "no ctx": (lambda: image_request(SMALL_PNG, ctx=NO_CTX), None, "ctx.session_id and ctx.turn_id are required"),
}
BAD_VIDEOS = {
    "no video stream": (lambda: video_request(audio_only_mp4()), "no_video_stream", "no video stream"),
    "truncated mp4": (
        lambda: video_request(_truncated(video_bytes(fmt="mp4", codec="libx264", seconds=4, fps=4))),
        "corrupt", "truncated",
    ),
    "avi": (lambda: video_request(video_bytes(fmt="avi", codec="mpeg4", seconds=1, fps=4)), "unsupported", "'avi'"),
    "garbage": (lambda: video_request(b"not a video at all" * 100), "unsupported", "mp4"),
    "empty": (lambda: video_request(b""), "empty", "empty"),
    "no ctx": (lambda: video_request(b"", ctx=NO_CTX), None, "ctx.session_id"),
}
BAD_FRAMES = {
    "none": (lambda: frames_request([]), "empty", "no camera frames"),
    "corrupt frame": (lambda: frames_request([(0, b"\xff\xd8\xff\xe0garbage")]), "corrupt", "damaged"),
    "too many": (lambda: frames_request(camera(list(range(0, 900, 100)))), None, "the limit is 8"),
}
CASES = (
    [("image", name, *case) for name, case in BAD_IMAGES.items()]
    + [("video", name, *case) for name, case in BAD_VIDEOS.items()]
    + [("frames", name, *case) for name, case in BAD_FRAMES.items()]
)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(("kind", "name", "build", "reason", "text"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
async def test_bad_input_is_invalid_argument_and_the_service_stays_up(
    vision: Served, kind: str, name: str, build, reason: str | None, text: str
) -> None:
    method = {"image": vision.stub.EncodeImage, "video": vision.stub.EncodeVideo, "frames": vision.stub.EncodeFrames}
    errors_before = sample("vita_vision_media_errors_total", kind=kind, reason=reason) if reason else 0.0
    started = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(method[kind](build(), timeout=30))
    assert caught.value.code() == INVALID, caught.value.details()
    assert text in caught.value.details()
    assert time.perf_counter() - started < 5
    if reason:
        assert sample("vita_vision_media_errors_total", kind=kind, reason=reason) == errors_before + 1
    await assert_serving(vision.stub)


async def test_unexpected_error_is_internal_without_details(vision: Served, monkeypatch, caplog) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("secret path /srv/weights")

    monkeypatch.setattr(vision_server, "image_to_tiles", broken)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(vision.stub.EncodeImage(image_request(SMALL_PNG), timeout=30))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == INTERNAL_MESSAGE
    assert "secret path" in caplog.text  # in the log only
    monkeypatch.undo()
    await assert_serving(vision.stub)


async def test_decoding_does_not_block_the_event_loop(vision: Served, monkeypatch) -> None:
    real = vision_server.image_to_tiles

    def slow(*args, **kwargs):
        time.sleep(2.0)  # a huge photo: PIL holds this thread, not the event loop
        return real(*args, **kwargs)

    monkeypatch.setattr(vision_server, "image_to_tiles", slow)
    encoding = asyncio.ensure_future(collect(vision.stub.EncodeImage(image_request(SMALL_PNG), timeout=30)))
    await asyncio.sleep(0.2)
    started = time.perf_counter()
    await vision.stub.Describe(vision_pb2.DescribeRequest(), timeout=5)
    assert time.perf_counter() - started < 1.0
    assert not encoding.done()
    check_chunks(await encoding, 1)


# ------------------------------------------------------------------------------------------ cancelling


async def _eventually(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_cancel_while_encoding_skips_the_remaining_tiles(vision: Served) -> None:
    engine = vision.app.engine
    before = engine.stats()
    data = encode_image(photo(1792, 1344), "JPEG")  # 4×3 grid + thumbnail = 13 tiles: steps of 4, 4, 4, 1
    call = vision.stub.EncodeImage(image_request(data, max_tiles=12), timeout=60)
    # The first step is done (the worker took the second one at once); cancel before the third starts.
    await _eventually(lambda: engine.stats().batches > before.batches)
    call.cancel()
    await _eventually(lambda: engine.stats().requests_cancelled == before.requests_cancelled + 1)
    await _eventually(lambda: engine.stats().queued_tiles == 0)
    assert engine.stats().tiles - before.tiles <= 8
    await assert_serving(vision.stub)


async def test_cancel_mid_stream(vision: Served) -> None:
    cancelled_before = sample("vita_vision_requests_total", kind="image", outcome="cancelled")
    data = encode_image(photo(1792, 1344), "JPEG")
    # Without BDP probing the client's HTTP/2 window stays at 64 KB, so the server is still sending
    # (13 chunks of 256 KB) when the client cancels, however slowly this test reads.
    options = [*channel_options(64 * MiB), ("grpc.http2.bdp_probe", 0)]
    async with grpc.aio.insecure_channel(vision.address, options=options) as channel:
        call = vision_pb2_grpc.VisionStub(channel).EncodeImage(image_request(data, max_tiles=12), timeout=60)
        first = await call.read()
        assert first.index == 0 and first.total == 13
        call.cancel()
        await _eventually(
            lambda: sample("vita_vision_requests_total", kind="image", outcome="cancelled") > cancelled_before
        )
    await assert_serving(vision.stub)


# ------------------------------------------------------------------------------------------ bounded


async def test_a_request_past_the_in_flight_bound_is_refused_with_a_retry_hint(vision: Served, monkeypatch) -> None:
    settings = vision.app.servicer._settings
    monkeypatch.setattr(settings, "max_requests_in_flight", 1)
    real, release = vision_server.image_to_tiles, threading.Event()

    def held(*args, **kwargs):
        release.wait(30)  # the first request stays in flight until the second one has been answered
        return real(*args, **kwargs)

    monkeypatch.setattr(vision_server, "image_to_tiles", held)
    first = asyncio.ensure_future(collect(vision.stub.EncodeImage(image_request(SMALL_PNG), timeout=60)))
    try:
        await _eventually(lambda: vision.app.servicer._in_flight == 1)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await collect(vision.stub.EncodeImage(image_request(SMALL_PNG), timeout=30))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "VITA_VISION_MAX_REQUESTS_IN_FLIGHT" in refused.value.details()
        assert retry_after_ms(refused.value.trailing_metadata()) == settings.busy_retry_after_ms
    finally:
        release.set()
    check_chunks(await first, 1)  # the admitted request is served, and the slot is free again
    monkeypatch.setattr(vision_server, "image_to_tiles", real)
    check_chunks(await collect(vision.stub.EncodeImage(image_request(SMALL_PNG), timeout=30)), 1)
