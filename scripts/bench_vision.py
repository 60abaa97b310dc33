"""Vision encode cost: per tile unbatched, and through the batching engine at several concurrencies.

    python scripts/bench_vision.py [--preset tiny|full] [--device cpu|cuda] [--dtype float32|bfloat16]

Each client thread sends one-tile requests back to back (a camera frame or a max-tiles-1 image each);
the engine batches whatever is queued, up to --max-batch tiles.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch

from services.vision.engine import VisionEngine
from services.vision.weights import load_vision
from shared.presets import get_preset


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_direct(model: torch.nn.Module, device: torch.device, dtype: torch.dtype, batch: int, repeats: int) -> float:
    """Median seconds per tile over `repeats` model calls on `batch` tiles (median: the host is shared)."""
    tiles = torch.randn(batch, 3, 448, 448, device=device, dtype=dtype)
    timings = []
    with torch.inference_mode():
        model(tiles)  # warm-up
        for _ in range(repeats):
            _sync(device)
            started = time.perf_counter()
            model(tiles)
            _sync(device)
            timings.append(time.perf_counter() - started)
    return statistics.median(timings) / batch


def bench_engine(
    model: torch.nn.Module, device: torch.device, clients: int, requests_each: int, max_batch: int
) -> dict[str, float]:
    engine = VisionEngine(model, device=device, max_batch_size=max_batch)
    engine.start()
    latencies: list[float] = []
    lock = threading.Lock()
    tile = torch.randn(1, 3, 448, 448)

    def client() -> None:
        for _ in range(requests_each):
            started = time.perf_counter()
            engine.encode_tiles(tile).result()
            with lock:
                latencies.append(time.perf_counter() - started)

    engine.encode_tiles(tile).result()  # warm-up
    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    stats = engine.stats()
    engine.stop()
    tiles = clients * requests_each
    return {
        "tiles_per_s": tiles / wall,
        "ms_per_tile": 1000 * wall / tiles,
        "p50_latency_ms": 1000 * statistics.median(latencies),
        "mean_batch": (stats.tiles - 1) / max(stats.batches - 1, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--requests", type=int, default=24, help="requests per client")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        # On a shared 2-core host, 2 spinning intra-op threads stall each other: 1 is often faster.
        torch.set_num_threads(args.threads)

    preset = get_preset(args.preset)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    model = load_vision(preset.vision, seed=preset.init_seed, device=device, dtype=dtype)
    print(f"preset={preset.name} device={device} dtype={args.dtype} torch_threads={torch.get_num_threads()}")
    for batch in (1, 8):
        per_tile = bench_direct(model, device, dtype, batch, args.repeats)
        print(f"direct  batch={batch}: {1000 * per_tile:7.2f} ms/tile (median call)")
    for clients in (1, 4, 8):
        result = bench_engine(model, device, clients, args.requests, args.max_batch)
        print(
            f"engine  clients={clients}: {result['ms_per_tile']:7.2f} ms/tile, {result['tiles_per_s']:7.1f} tiles/s, "
            f"p50 latency {result['p50_latency_ms']:7.2f} ms, mean batch {result['mean_batch']:.2f}"
        )


if __name__ == "__main__":
    main()
