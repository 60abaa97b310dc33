"""The fake vision service: vita.vision.v1.Vision answering with zero embeddings, 256 rows per tile or
frame, after vision_encode_ms_per_tile each. Media bytes are not decoded: only their presence is checked."""

from __future__ import annotations

import asyncio

import grpc

from apps.fakes.config import FakeSettings
from apps.fakes.pacing import Slots
from shared.grpc_server import LoadingGate
from shared.presets import get_preset
from vita.common.v1 import common_pb2
from vita.vision.v1 import vision_pb2, vision_pb2_grpc

ROWS_PER_TILE = 256
MAX_TILES = 12
# Frames a fake video yields (the real service samples by duration; the orchestrator only counts rows).
VIDEO_FRAMES = 4


class FakeVision(vision_pb2_grpc.VisionServicer, LoadingGate):
    def __init__(self, settings: FakeSettings, preset: str):
        self._settings = settings
        self._hidden = get_preset(preset).llm.hidden_size
        self._slots = Slots(settings.encoder_max_concurrent)
        self._weights = common_pb2.WeightsInfo(source="fake", name=preset, dtype="none", device="none")

    async def Describe(self, request, context):
        await self.require_loaded(context)
        return vision_pb2.DescribeResponse(tokens_per_tile=ROWS_PER_TILE, hidden_size=self._hidden,
                                           weights=self._weights)

    async def _tiles(self, count: int, timestamps: list[int] | None = None):
        async with self._slots.hold() as queue_ns:
            compute_s = self._settings.vision_encode_ms_per_tile * count / 1000
            await asyncio.sleep(compute_s)
        rows = bytes(4 * ROWS_PER_TILE * self._hidden)
        for index in range(count):
            chunk = vision_pb2.EmbeddingChunk(
                index=index, total=count,
                embeddings=common_pb2.Tensor(dtype="float32", shape=[ROWS_PER_TILE, self._hidden], data=rows),
                timestamp_ms=timestamps[index] if timestamps else 0,
            )
            if index == count - 1:
                chunk.timings.append(common_pb2.StageTiming(stage="vision.encoder", queue_ns=queue_ns,
                                                            compute_ns=int(compute_s * 1e9)))
            yield chunk

    async def EncodeImage(self, request, context):
        await self.require_loaded(context)
        if not request.image.data:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "image.data is empty")
        if not 0 <= request.max_tiles <= MAX_TILES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"max_tiles must be between 1 and {MAX_TILES}")
        tiles = max(1, request.max_tiles)
        # Several dynamic tiles come with a thumbnail tile, as the real tiling does.
        async for chunk in self._tiles(tiles + 1 if tiles > 1 else 1):
            yield chunk

    async def EncodeVideo(self, request, context):
        await self.require_loaded(context)
        if not request.video.data:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "video.data is empty")
        async for chunk in self._tiles(VIDEO_FRAMES, [i * 1000 for i in range(VIDEO_FRAMES)]):
            yield chunk

    async def EncodeFrames(self, request, context):
        await self.require_loaded(context)
        if not request.frames or any(not frame.jpeg for frame in request.frames):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "frames must be non-empty JPEG images")
        async for chunk in self._tiles(len(request.frames), [frame.timestamp_ms for frame in request.frames]):
            yield chunk
