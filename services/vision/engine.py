"""Batches the tiles of concurrent requests through the vision model, on the shared engine loop.

The servicer's event loop only enqueues and awaits futures (wrap with `asyncio.wrap_future`); the model
runs on this engine's own thread. Each step takes up to `max_batch_size` tiles from the queue in arrival
order, so a large request may be split across steps and a small one may share a step with others; every
request gets its own rows back, in order, as one tensor.

A request can be cancelled (`future.cancel()`) until its last tiles are computed: its remaining tiles
are then skipped, so a cancelled 13-tile request costs at most the step already running.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from services.vision.model import VisionEncoder
from shared.engine_loop import EngineLoop, LoopStats
from shared.engine_loop import EngineStoppedError as _LoopStoppedError

logger = logging.getLogger(__name__)


class EngineStoppedError(_LoopStoppedError):
    """The engine is not running (never started, or stopped while the request waited)."""


@dataclass(eq=False)
class _Request:
    tiles: torch.Tensor  # [n, 3, S, S] on the caller's device
    future: Future[torch.Tensor]
    next_tile: int = 0  # tiles before it are in a step already
    parts: list[torch.Tensor] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return self.tiles.shape[0] - self.next_tile


@dataclass(frozen=True)
class _TileSlice:
    request: _Request
    start: int
    end: int

    @property
    def tiles(self) -> int:
        return self.end - self.start

    @property
    def completes_request(self) -> bool:
        return self.end == self.request.tiles.shape[0]


@dataclass(frozen=True)
class VisionEngineStats:
    batches: int
    tiles: int
    requests_completed: int
    requests_failed: int
    requests_cancelled: int
    queued_requests: int
    queued_tiles: int
    busy_s: float  # time spent in model steps
    batch_size_counts: dict[int, int]  # batch size (tiles) → number of steps of that size
    loop: LoopStats = field(default_factory=LoopStats)  # the engine thread: iterations, commands, busy time


class VisionEngine(EngineLoop):
    stopped_error = EngineStoppedError

    def __init__(
        self,
        model: VisionEncoder,
        *,
        device: torch.device | str,
        max_batch_size: int = 8,
        output_device: torch.device | str = "cpu",
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        """`on_batch(tiles, seconds)` is called on the worker thread after each step (for metrics)."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be ≥ 1, got {max_batch_size}")
        super().__init__(name="vision")
        self._model = model
        self._device = torch.device(device)
        self._dtype = next(model.parameters()).dtype
        self._output_device = torch.device(output_device)
        self._max_batch_size = max_batch_size
        self._on_batch = on_batch
        self._tile_size = model.dims.image_size
        self._out_shape = (model.dims.tokens_per_tile, model.dims.llm_hidden)
        # Engine-thread state: requests with tiles not yet in a step, oldest first.
        self._queue: deque[_Request] = deque()
        # Shared with caller threads, guarded by the inbox lock. Queued counts include submits still in
        # the inbox, so a servicer sees the whole backlog when it decides whether to admit more.
        self._queued_requests = 0
        self._queued_tiles = 0
        self._batches = 0
        self._tiles = 0
        self._completed = 0
        self._failed = 0
        self._cancelled = 0
        self._busy_s = 0.0
        self._batch_sizes: Counter[int] = Counter()

    # ------------------------------------------------------------------------------------------- API

    def encode_tiles(self, tiles: torch.Tensor) -> Future[torch.Tensor]:
        """Tiles [n, 3, S, S] → future of [n, tokens_per_tile, llm_hidden] (model dtype, on output_device)."""
        size = self._tile_size
        if tiles.dim() != 4 or tuple(tiles.shape[1:]) != (3, size, size):
            raise ValueError(f"expected tiles [n, 3, {size}, {size}], got {tuple(tiles.shape)}")
        if not tiles.is_floating_point():
            raise ValueError(f"tiles must be a floating-point tensor, got {tiles.dtype}")
        future: Future[torch.Tensor] = Future()
        if tiles.shape[0] == 0:
            future.set_running_or_notify_cancel()
            future.set_result(torch.empty(0, *self._out_shape, dtype=self._dtype, device=self._output_device))
            return future
        request = _Request(tiles=tiles, future=future)
        with self.inbox_lock:
            self.post(lambda: self._queue.append(request))
            self._queued_requests += 1
            self._queued_tiles += tiles.shape[0]
        return future

    def stats(self) -> VisionEngineStats:
        loop = self.loop_stats()
        with self.inbox_lock:
            return VisionEngineStats(
                batches=self._batches,
                tiles=self._tiles,
                requests_completed=self._completed,
                requests_failed=self._failed,
                requests_cancelled=self._cancelled,
                queued_requests=self._queued_requests,
                queued_tiles=self._queued_tiles,
                busy_s=self._busy_s,
                batch_size_counts=dict(sorted(self._batch_sizes.items())),
                loop=loop,
            )

    # ------------------------------------------------------------------------- loop hooks (engine thread)

    def has_work(self) -> bool:
        return bool(self._queue)

    def step(self) -> None:
        slices = self._take_slices()
        if slices:
            self._encode(slices)

    def on_step_error(self, error: Exception) -> None:
        """A bug outside the model call (which fails its own slices): fail every queued request."""
        self._fail_queued(error)

    def on_stop(self) -> None:
        self._fail_queued(EngineStoppedError("the vision engine stopped before this request ran"))

    # ---------------------------------------------------------------------------------------- worker

    def _take_slices(self) -> list[_TileSlice]:
        """Up to max_batch_size tiles from the queue head, in arrival order; cancelled requests leave."""
        slices: list[_TileSlice] = []
        capacity = self._max_batch_size
        cancelled = left_queue = dropped_tiles = 0
        for request in list(self._queue):
            if capacity == 0:
                break
            if request.future.cancelled():
                self._queue.remove(request)
                cancelled += 1
                left_queue += 1
                dropped_tiles += request.remaining
                continue
            count = min(capacity, request.remaining)
            slices.append(_TileSlice(request, request.next_tile, request.next_tile + count))
            request.next_tile += count
            capacity -= count
            if request.remaining == 0:
                self._queue.remove(request)  # fully scheduled; completed after this step
                left_queue += 1
        with self.inbox_lock:
            self._cancelled += cancelled
            self._queued_requests -= left_queue
            self._queued_tiles -= dropped_tiles + sum(piece.tiles for piece in slices)
        return slices

    def _encode(self, slices: list[_TileSlice]) -> None:
        batch_tiles = sum(piece.tiles for piece in slices)
        started = time.perf_counter()
        try:
            batch = torch.cat([piece.request.tiles[piece.start : piece.end] for piece in slices])
            with torch.inference_mode():
                output = self._model(batch.to(device=self._device, dtype=self._dtype))
            output = output.to(self._output_device)
        except Exception as error:  # noqa: BLE001 - the worker must survive; the error goes to the callers
            logger.exception("vision batch of %d tiles failed", batch_tiles)
            self._fail_slices(slices, error)
            return
        elapsed = time.perf_counter() - started
        offset = 0
        finished: list[_Request] = []
        for piece in slices:
            part = output[offset : offset + piece.tiles]
            # A view of a shared batch would keep the whole batch's memory alive for as long as any
            # one caller holds its result.
            piece.request.parts.append(part if len(slices) == 1 else part.clone())
            offset += piece.tiles
            if piece.completes_request:
                finished.append(piece.request)
        completed = cancelled = 0
        for request in finished:
            # Cancelled between steps: drop the result instead of resolving.
            if request.future.set_running_or_notify_cancel():
                parts = request.parts
                request.future.set_result(parts[0] if len(parts) == 1 else torch.cat(parts))
                completed += 1
            else:
                cancelled += 1
            request.parts = []
        with self.inbox_lock:
            self._batches += 1
            self._tiles += batch_tiles
            self._batch_sizes[batch_tiles] += 1
            self._busy_s += elapsed
            self._completed += completed
            self._cancelled += cancelled
        if self._on_batch is not None:
            try:
                self._on_batch(batch_tiles, elapsed)
            except Exception:  # noqa: BLE001 - a metrics hook must never stop the worker
                logger.exception("vision on_batch hook failed")

    def _fail_slices(self, slices: list[_TileSlice], error: BaseException) -> None:
        """The requests of a failed step; one split across steps leaves the queue with its other tiles."""
        requests = list({id(piece.request): piece.request for piece in slices}.values())
        still_queued = [request for request in requests if request in self._queue]
        for request in still_queued:
            self._queue.remove(request)
        with self.inbox_lock:
            self._queued_requests -= len(still_queued)
            self._queued_tiles -= sum(request.remaining for request in still_queued)
        self._fail_requests(requests, error)

    def _fail_queued(self, error: BaseException) -> None:
        requests = list(self._queue)
        self._queue.clear()
        with self.inbox_lock:
            self._queued_requests -= len(requests)
            self._queued_tiles -= sum(request.remaining for request in requests)
        self._fail_requests(requests, error)

    def _fail_requests(self, requests: list[_Request], error: BaseException) -> None:
        failed = 0
        for request in requests:
            if request.future.set_running_or_notify_cancel():
                request.future.set_exception(error)
                failed += 1
        with self.inbox_lock:
            self._failed += failed
