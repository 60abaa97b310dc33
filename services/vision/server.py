"""gRPC servicer of the vision service: media bytes → tiles (worker threads) → engine → one chunk per tile.

Status codes (the right code with an actionable message; internals never leak):
* Every `MediaInputError` is INVALID_ARGUMENT with its user-facing message — also "too large" by bytes,
  pixels or a decompression-bomb header. RESOURCE_EXHAUSTED tells a client that retrying later may work
  (a quota, a full queue); an oversized file fails the same way on every retry, so it is an argument
  problem. (A request over the gRPC message limit never reaches us: gRPC itself answers
  RESOURCE_EXHAUSTED, which is why the byte limits default below that limit.)
* A bad `max_tiles`, too many camera frames, or a call without ctx.session_id / ctx.turn_id: INVALID_ARGUMENT.
* More requests in flight than VITA_VISION_MAX_REQUESTS_IN_FLIGHT: RESOURCE_EXHAUSTED with `retry-after-ms`.
* Engine stopped (shutdown): UNAVAILABLE, retryable on another replica.
* Anything else: INTERNAL with a generic message; the details go to the log only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import torch

from services.vision import metrics
from services.vision.config import VisionSettings
from services.vision.engine import EngineStoppedError, VisionEngine
from services.vision.images import MediaInputError, TilingOptions, image_to_tiles
from services.vision.video import frames_from_camera, video_to_tiles
from services.vision.weights import load_vision
from shared.grpc_server import EngineApp, LoadingGate
from shared.presets import get_preset
from shared.retry_hint import abort_exhausted
from shared.settings import ServiceSettings, resolve_device, resolve_dtype
from shared.tensors import to_proto
from shared.weights_info import weights_info
from vita.common.v1 import common_pb2
from vita.vision.v1 import vision_pb2, vision_pb2_grpc

log = logging.getLogger(__name__)

UNAVAILABLE_MESSAGE = "the vision service is shutting down; retry"
INTERNAL_MESSAGE = "encoding failed inside the vision service"
# Any slack > 0 works: frames_from_camera keeps frames no older than (newest - window), and we want all.
_CAMERA_WINDOW_SLACK_S = 1.0


@dataclass(frozen=True)
class DecodedMedia:
    """Normalised tiles of one image, video or camera clip, ready for the engine."""

    tiles: torch.Tensor  # [n, 3, 448, 448] float32
    timestamps_ms: list[int] | None  # per frame, for video; None for an image


@dataclass(frozen=True)
class Encoded:
    embeddings: torch.Tensor  # [n, tokens_per_tile, hidden] in the served dtype, on the CPU
    timestamps_ms: list[int] | None
    timings: list[common_pb2.StageTiming]


class StepLog:
    """When each engine step started and how many tiles it held, recorded by a forward pre-hook on the
    model (on the engine's worker thread, before the step's results are handed out).

    The engine reports no per-request queue/compute split. It is FIFO, so a request's first step is the
    first one started after its submission once the tiles queued ahead of it have been taken; from then
    on every step carries its tiles until it completes. Requests ahead that are cancelled while queued
    make the split lean towards queue time; it is an estimate for timings and metrics, never for logic.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._lock = threading.Lock()
        self._steps: deque[tuple[int, int]] = deque(maxlen=capacity)

    def attach(self, model: torch.nn.Module) -> None:
        model.register_forward_pre_hook(self._record)

    def _record(self, module, args) -> None:
        with self._lock:
            self._steps.append((time.perf_counter_ns(), int(args[0].shape[0])))

    def split(self, submitted_ns: int, tiles_ahead: int, done_ns: int) -> tuple[int, int]:
        """(queue_ns, compute_ns) of a request submitted at `submitted_ns` that completed at `done_ns`."""
        with self._lock:
            steps = [step for step in self._steps if submitted_ns <= step[0] <= done_ns]
        first_ns = None
        taken = 0
        for started_ns, tiles in steps:
            taken += tiles
            if taken > tiles_ahead:
                first_ns = started_ns
                break
        if first_ns is None:
            first_ns = steps[-1][0] if steps else done_ns
        return first_ns - submitted_ns, done_ns - first_ns


def _timing(stage: str, queue_ns: int = 0, compute_ns: int = 0) -> common_pb2.StageTiming:
    return common_pb2.StageTiming(stage=stage, queue_ns=queue_ns, compute_ns=compute_ns)


class _Rejected(Exception):
    """A request field check failed before any work: INVALID_ARGUMENT with this message."""


class _Busy(Exception):
    """Requests in flight are at their bound: RESOURCE_EXHAUSTED with a retry hint."""


class VisionServicer(vision_pb2_grpc.VisionServicer, LoadingGate):
    """Registered before the model loads (health says NOT_SERVING meanwhile); `attach` opens it."""

    def attach(self, engine: VisionEngine, steps: StepLog, decoder: ThreadPoolExecutor, settings: VisionSettings,
               tokens_per_tile: int, hidden_size: int, weights: common_pb2.WeightsInfo) -> None:
        self._engine = engine
        self._steps = steps
        self._settings = settings
        self._image_limits = settings.image_limits()
        self._video_limits = settings.video_limits()
        self._decoder = decoder
        self._tokens_per_tile = tokens_per_tile
        self._hidden_size = hidden_size
        self._weights = weights
        self._in_flight = 0
        self.open()

    async def Describe(self, request, context):
        await self.require_loaded(context)
        return vision_pb2.DescribeResponse(
            tokens_per_tile=self._tokens_per_tile, hidden_size=self._hidden_size, weights=self._weights
        )

    async def EncodeImage(self, request, context):
        await self.require_loaded(context)
        limit = self._settings.max_tiles_limit
        # 0 (unset) is the real-time default of one tile; the thumbnail only comes with a grid of > 1.
        max_tiles = request.max_tiles or 1
        invalid = None if 1 <= max_tiles <= limit else f"max_tiles must be between 1 and {limit}, got {max_tiles}"
        data, limits = request.image.data, self._image_limits

        def decode() -> DecodedMedia:
            tiles = image_to_tiles(data, TilingOptions(min_tiles=1, max_tiles=max_tiles), limits)
            return DecodedMedia(tiles.pixel_values, None)

        async for chunk in self._encode("image", request.ctx, decode, context, invalid):
            yield chunk

    async def EncodeVideo(self, request, context):
        await self.require_loaded(context)
        data, limits = request.video.data, self._video_limits

        def decode() -> DecodedMedia:
            clip = video_to_tiles(data, limits)
            return DecodedMedia(clip.pixel_values, [round(t * 1000) for t in clip.timestamps_s])

        async for chunk in self._encode("video", request.ctx, decode, context):
            yield chunk

    async def EncodeFrames(self, request, context):
        await self.require_loaded(context)
        limit = self._settings.max_camera_frames
        invalid = None
        if len(request.frames) > limit:
            invalid = f"{len(request.frames)} camera frames were sent; the limit is {limit} per call (16 are sampled)"
        frames = [(frame.timestamp_ms, frame.jpeg) for frame in request.frames]
        limits = self._image_limits

        def decode() -> DecodedMedia:
            # The window is the span of the frames given: the caller already chose which frames count.
            stamps = [stamp for stamp, _ in frames] or [0]
            window_s = (max(stamps) - min(stamps)) / 1000.0 + _CAMERA_WINDOW_SLACK_S
            clip = frames_from_camera(frames, window_s, limits)
            # timestamp_ms is the frame's time in the clip (from its first frame), as for a video file.
            return DecodedMedia(clip.pixel_values, [round(t * 1000) for t in clip.timestamps_s])

        async for chunk in self._encode("frames", request.ctx, decode, context, invalid):
            yield chunk

    # ------------------------------------------------------------------------------------------ helpers

    async def _encode(self, kind: str, ctx: common_pb2.CallContext, decode: Callable[[], DecodedMedia], context,
                      invalid: str | None = None):
        """Runs one request and streams its chunks; `invalid` is a request-field problem found by the caller."""
        outcome = "cancelled"
        try:
            try:
                if not ctx.session_id or not ctx.turn_id:
                    raise _Rejected("ctx.session_id and ctx.turn_id are required")
                if invalid is not None:
                    raise _Rejected(invalid)
                if self._in_flight >= self._settings.max_requests_in_flight:
                    raise _Busy()
                self._in_flight += 1
                try:
                    encoded = await self._run(kind, decode)
                finally:
                    self._in_flight -= 1
            except _Busy:
                outcome = "refused"
                await abort_exhausted(
                    context,
                    f"the vision service has {self._settings.max_requests_in_flight} requests in flight, its limit "
                    f"(VITA_VISION_MAX_REQUESTS_IN_FLIGHT); retry in {self._settings.busy_retry_after_ms} ms",
                    self._settings.busy_retry_after_ms,
                )
            except _Rejected as error:
                outcome = "invalid"
                code, message = grpc.StatusCode.INVALID_ARGUMENT, str(error)
            except MediaInputError as error:
                outcome = "invalid"
                metrics.MEDIA_ERRORS.labels(kind, error.reason).inc()
                log.info("rejected %s (%s) for session %s turn %s", kind, error.reason, ctx.session_id, ctx.turn_id)
                code, message = grpc.StatusCode.INVALID_ARGUMENT, error.message
            except EngineStoppedError:
                outcome = "unavailable"
                code, message = grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_MESSAGE
            except Exception:
                outcome = "failed"
                log.exception("encoding a %s failed for session %s turn %s", kind, ctx.session_id, ctx.turn_id)
                code, message = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
            else:
                code = None
            if code is not None:
                await context.abort(code, message)

            total = int(encoded.embeddings.shape[0])
            for index in range(total):
                last = index == total - 1
                yield vision_pb2.EmbeddingChunk(
                    index=index,
                    total=total,
                    embeddings=to_proto(encoded.embeddings[index]),
                    timestamp_ms=encoded.timestamps_ms[index] if encoded.timestamps_ms else 0,
                    timings=encoded.timings if last else (),
                )
            outcome = "ok"
            metrics.TILES.labels(kind).inc(total)
        finally:
            metrics.REQUESTS.labels(kind, outcome).inc()

    async def _run(self, kind: str, decode: Callable[[], DecodedMedia]) -> Encoded:
        """Decode in a worker thread, then encode on the engine. A cancelled call cancels the engine work."""
        def timed_decode() -> tuple[DecodedMedia, int, int]:
            started = time.perf_counter_ns()
            return decode(), started, time.perf_counter_ns()

        waited = time.perf_counter_ns()
        # PIL / PyAV work never runs on the event loop (health checks and cancels must stay responsive).
        # Its own small pool bounds the memory of pictures decoded at once; a call cancelled while its
        # decode still waits for a thread never decodes.
        media, started, decoded = await asyncio.get_running_loop().run_in_executor(self._decoder, timed_decode)
        metrics.DECODE_SECONDS.labels(kind).observe((decoded - started) / 1e9)

        tiles_ahead = self._engine.stats().queued_tiles
        submitted = time.perf_counter_ns()
        future = self._engine.encode_tiles(media.tiles)
        done_at: list[int] = []
        future.add_done_callback(lambda _: done_at.append(time.perf_counter_ns()))
        try:
            embeddings = await asyncio.wrap_future(future)
        finally:
            # The caller went away (or we failed): queued tiles of this request are skipped.
            future.cancel()
        done = done_at[0] if done_at else time.perf_counter_ns()
        queue_ns, compute_ns = self._steps.split(submitted, tiles_ahead, done)
        metrics.QUEUE_SECONDS.observe(queue_ns / 1e9)
        metrics.COMPUTE_SECONDS.observe(compute_ns / 1e9)
        return Encoded(
            embeddings=embeddings,
            timestamps_ms=media.timestamps_ms,
            timings=[
                _timing("vision.decode", queue_ns=started - waited, compute_ns=decoded - started),
                _timing("vision.queue", queue_ns=queue_ns),
                _timing("vision.encode", compute_ns=compute_ns),
            ],
        )


def _observe_step(tiles: int, seconds: float) -> None:
    """Engine hook, on its worker thread after each step."""
    metrics.BATCH_SIZE.observe(tiles)
    metrics.STEP_SECONDS.observe(seconds)


def build_engine(common: ServiceSettings, settings: VisionSettings) -> tuple[VisionEngine, StepLog, dict]:
    """Loads the vision model and builds the engine (also used by an in-process benchmark)."""
    preset = get_preset(common.preset)
    device = resolve_device(common.device)
    dtype = resolve_dtype(common.dtype, device)
    model = load_vision(
        preset.vision, seed=preset.init_seed, device=device, dtype=dtype, checkpoint_dir=common.checkpoint
    )
    steps = StepLog()
    steps.attach(model)
    # Embeddings come back on the CPU in the model's dtype (bf16 on GPU, fp32 on CPU) and are sent as such.
    engine = VisionEngine(model, device=device, max_batch_size=settings.max_batch_size, on_batch=_observe_step)
    # A checkpoint brings its own dimensions (the preset's only apply to random weights).
    dims = model.dims
    facts = dict(
        tokens_per_tile=dims.tokens_per_tile,
        hidden_size=dims.llm_hidden,
        weights=weights_info(common.preset, common.checkpoint, dtype, device),
    )
    return engine, steps, facts


class VisionApp(EngineApp):
    name = "vision"
    metrics = metrics.RPC
    service = vision_pb2.DESCRIPTOR.services_by_name["Vision"]
    add_servicer = staticmethod(vision_pb2_grpc.add_VisionServicer_to_server)

    def __init__(self, common: ServiceSettings, settings: VisionSettings):
        super().__init__(common, settings, VisionServicer())

    def start(self) -> None:
        engine, steps, facts = build_engine(self.common, self.settings)
        engine.start()
        metrics.watch_engine(engine.stats)
        self.engine = engine
        decoder = self.pool(self.settings.max_concurrent_decodes, "vision-decode")
        self.servicer.attach(engine, steps, decoder, self.settings, **facts)
