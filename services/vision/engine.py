"""Batches the tiles of concurrent requests through the vision model on one worker thread.

The servicer's event loop only enqueues and awaits futures (wrap with `asyncio.wrap_future`); the model
runs on this engine's own thread. Each step takes up to `max_batch_size` tiles from the queue in arrival
order, so a large request may be split across steps and a small one may share a step with others; every
request gets its own rows back, in order, as one tensor.

A request can be cancelled (`future.cancel()`) until its last tiles are computed: its remaining tiles
are then skipped, so a cancelled 13-tile request costs at most the step already running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from services.vision.model import VisionEncoder

logger = logging.getLogger(__name__)


class EngineStoppedError(RuntimeError):
    """The engine is not running (never started, or stopped while the request waited)."""


@dataclass
class _Request:
    tiles: torch.Tensor  # [n, 3, S, S] on the caller's device
    future: Future[torch.Tensor]
    next_tile: int = 0
    parts: list[torch.Tensor] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return self.tiles.shape[0] - self.next_tile


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


class VisionEngine:
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
        self._model = model
        self._device = torch.device(device)
        self._dtype = next(model.parameters()).dtype
        self._output_device = torch.device(output_device)
        self._max_batch_size = max_batch_size
        self._on_batch = on_batch
        self._tile_size = model.dims.image_size
        self._out_shape = (model.dims.tokens_per_tile, model.dims.llm_hidden)
        self._cond = threading.Condition()
        self._pending: deque[_Request] = deque()
        self._running = False
        self._thread: threading.Thread | None = None
        self._batches = 0
        self._tiles = 0
        self._completed = 0
        self._failed = 0
        self._cancelled = 0
        self._busy_s = 0.0
        self._batch_sizes: Counter[int] = Counter()

    # ------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        with self._cond:
            if self._running:
                return
            self._running = True
        self._thread = threading.Thread(target=self._run, name="vision-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Finish the running step, then fail every queued request with EngineStoppedError."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        with self._cond:
            abandoned, self._pending = list(self._pending), deque()
        failed = 0
        for request in abandoned:
            if request.future.set_running_or_notify_cancel():
                request.future.set_exception(EngineStoppedError("the vision engine stopped before this request ran"))
                failed += 1
        with self._cond:
            self._failed += failed

    @property
    def running(self) -> bool:
        """False once stop() was called (for health checks)."""
        with self._cond:
            return self._running

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
        with self._cond:
            if not self._running:
                raise EngineStoppedError("the vision engine is not running")
            self._pending.append(_Request(tiles=tiles, future=future))
            self._cond.notify()
        return future

    def stats(self) -> VisionEngineStats:
        with self._cond:
            return VisionEngineStats(
                batches=self._batches,
                tiles=self._tiles,
                requests_completed=self._completed,
                requests_failed=self._failed,
                requests_cancelled=self._cancelled,
                queued_requests=len(self._pending),
                queued_tiles=sum(request.remaining for request in self._pending),
                busy_s=self._busy_s,
                batch_size_counts=dict(sorted(self._batch_sizes.items())),
            )

    # ---------------------------------------------------------------------------------------- worker

    def _take_batch(self) -> list[tuple[_Request, int, int]]:
        """Up to max_batch_size tiles from the queue head, as (request, start, end) slices. Holds the lock."""
        slices: list[tuple[_Request, int, int]] = []
        capacity = self._max_batch_size
        for request in list(self._pending):
            if capacity == 0:
                break
            if request.future.cancelled():
                self._pending.remove(request)
                self._cancelled += 1
                continue
            count = min(capacity, request.remaining)
            slices.append((request, request.next_tile, request.next_tile + count))
            request.next_tile += count
            capacity -= count
            if request.remaining == 0:
                self._pending.remove(request)  # fully scheduled; completed after this step
        return slices

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._running and not self._pending:
                    self._cond.wait()
                if not self._running:
                    return
                slices = self._take_batch()
            if slices:
                self._step(slices)

    def _step(self, slices: list[tuple[_Request, int, int]]) -> None:
        batch_tiles = sum(end - start for _, start, end in slices)
        started = time.perf_counter()
        try:
            batch = torch.cat([request.tiles[start:end] for request, start, end in slices])
            with torch.inference_mode():
                output = self._model(batch.to(device=self._device, dtype=self._dtype))
            output = output.to(self._output_device)
        except Exception as error:  # noqa: BLE001 - the worker must survive; the error goes to the callers
            logger.exception("vision batch of %d tiles failed", batch_tiles)
            self._fail(slices, error)
            return
        elapsed = time.perf_counter() - started
        offset = 0
        finished: list[_Request] = []
        for request, start, end in slices:
            part = output[offset : offset + end - start]
            # A view of a shared batch would keep the whole batch's memory alive for as long as any
            # one caller holds its result.
            request.parts.append(part if len(slices) == 1 else part.clone())
            offset += end - start
            if end == request.tiles.shape[0]:
                finished.append(request)
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
        with self._cond:
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

    def _fail(self, slices: list[tuple[_Request, int, int]], error: BaseException) -> None:
        failed = 0
        with self._cond:
            for request, _, _ in slices:
                if request in self._pending:
                    self._pending.remove(request)
        for request in {id(request): request for request, _, _ in slices}.values():
            if request.future.set_running_or_notify_cancel():
                request.future.set_exception(error)
                failed += 1
        with self._cond:
            self._failed += failed
