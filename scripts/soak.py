"""Soak test (not in CI): N sessions of mixed turns (text, image, spoken) for M minutes through the SDK,
then what grew. `PYTHONPATH=. python scripts/soak.py --sessions 8 --minutes 20`.

Without --address it starts a local stack (tiny preset, every model service, a private Redis) and knows
its processes; with --address (e.g. a `vita up`) it finds the stack's processes in /proc by their command
lines and needs --metrics-port (the orchestrator's /metrics) and --redis-url for those figures.

Reports, per process: RSS and open fds at start (after a warm-up turn per session), and at the end; the
orchestrator's asyncio task count (vita_orchestrator_asyncio_tasks) idle before and after; the Redis key
count before and after (every session is deleted at the end, and each session is replaced by a new one
every --turns-per-session turns, so deleted sessions must leave no keys); turn latency p50/p99 by kind.
The orchestrator's media-embedding cache (an LRU bounded by VITA_ORCH_EMBEDDING_CACHE_BYTES, 256 MiB by
default) fills with every new image and utterance until it reaches its bound; its bytes are read from
/metrics and its growth is reported beside the RSS and taken out of the orchestrator's RSS growth.
Exits 1 if a goal is missed: RSS growth over 5%, leaked tasks or keys, or failed turns."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis
from PIL import Image

import sdk
from apps.launcher import Stack, StackConfig

KINDS = ("text", "image", "spoken")
AUDIO_RATE = 16_000
CHUNK_MS = 40
RSS_GROWTH_GOAL = 0.05
# Tasks of idle machinery (server, metrics) may come and go by a few between two scrapes.
TASK_SLACK = 2


@dataclass
class ProcessSample:
    rss_kib: int
    fds: int


def sample(pid: int) -> ProcessSample | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return ProcessSample(rss, fds)


def find_processes() -> dict[str, int]:
    """A running stack's processes by name, from /proc command lines (`python -m services.<name>`, redis-server)."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        for index, word in enumerate(words[:-1]):
            if word == "-m" and words[index + 1].startswith("services."):
                found.setdefault(words[index + 1].split(".", 1)[1], int(entry.name))
        if words and Path(words[0]).name == "redis-server":
            found.setdefault("redis", int(entry.name))
    return found


def orchestrator_gauge(metrics_port: int | None, name: str) -> float | None:
    if metrics_port is None:
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


def asyncio_tasks(metrics_port: int | None) -> float | None:
    return orchestrator_gauge(metrics_port, "vita_orchestrator_asyncio_tasks")


def embedding_cache_kib(metrics_port: int | None) -> int | None:
    """The orchestrator's media-embedding LRU: bounded by a setting, it fills by design, so its growth is
    not a leak and is taken out of the orchestrator's RSS growth."""
    value = orchestrator_gauge(metrics_port, "vita_orchestrator_embedding_cache_bytes")
    return None if value is None else int(value // 1024)


# Keys that expire this soon are counting windows (turns per minute), not state a session left behind.
SHORT_LIVED_TTL_S = 120


def redis_keys(url: str) -> dict[str, int] | None:
    """Keys by kind (vita:{tenant}:{kind}:...), short-lived ones apart."""
    try:
        client = redis.Redis.from_url(url)
        kinds: dict[str, int] = {}
        for key in client.scan_iter(count=1000):
            parts = key.decode(errors="replace").split(":")
            kind = parts[2] if len(parts) > 2 and parts[0] == "vita" else "other"
            ttl = client.ttl(key)
            if 0 <= ttl <= SHORT_LIVED_TTL_S:
                kind = f"short-lived:{kind}"
            kinds[kind] = kinds.get(kind, 0) + 1
        return kinds
    except redis.RedisError:
        return None


def lasting(kinds: dict[str, int] | None) -> int | None:
    return None if kinds is None else sum(n for kind, n in kinds.items() if not kind.startswith("short-lived:"))


def photo(seed: int) -> sdk.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return sdk.Image(buffer.getvalue())


def utterance(seed: int, seconds: float = 1.2) -> bytes:
    """Voiced-sounding input: a gliding tone with harmonics and noise (push-to-talk, so no VAD decides)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(AUDIO_RATE * seconds)) / AUDIO_RATE
    pitch = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / AUDIO_RATE
    wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.25 + rng.normal(0, 0.02, t.size)
    return (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()


@dataclass
class Figures:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {kind: [] for kind in KINDS})
    turns: int = 0
    failed: list[str] = field(default_factory=list)
    sessions: int = 0
    warmed: int = 0


async def run_session(client: sdk.AsyncClient, index: int, deadline: float, turns_per_session: int,
                      figures: Figures, warmed: asyncio.Event, want_warm: int) -> None:
    config = sdk.SessionConfig(seed=index, max_reply_tokens=16, vad=sdk.VoiceActivity(enabled=False))
    turn_number = 0
    first = True
    while time.monotonic() < deadline:
        session = await client.create_session(config)
        figures.sessions += 1
        conv = client.conversation(session.session_id, audio=sdk.AudioFormat(AUDIO_RATE, "pcm16"))
        async with conv:
            for _ in range(turns_per_session):
                if time.monotonic() >= deadline:
                    break
                kind = KINDS[(index + turn_number) % len(KINDS)]
                turn_number += 1
                started = time.perf_counter()
                try:
                    if kind == "text":
                        result = await conv.ask(f"Session {index}, turn {turn_number}: say something.", timeout=120)
                    elif kind == "image":
                        result = await conv.ask("What is in the picture?", media=[photo(index * 100_000 + turn_number)],
                                                timeout=120)
                    else:
                        pcm = utterance(turn_number)
                        step = AUDIO_RATE * CHUNK_MS // 1000 * 2
                        for offset in range(0, len(pcm), step):
                            await conv.append_audio(pcm[offset: offset + step])
                        result = await (await conv.commit_audio()).result(timeout=120)
                    if result.outcome not in ("completed", "suppressed"):
                        figures.failed.append(f"{kind}: outcome {result.outcome}")
                except (sdk.TurnFailed, sdk.TurnInterruptedError, asyncio.TimeoutError) as error:
                    figures.failed.append(f"{kind}: {type(error).__name__}: {error}"[:300])
                    continue
                figures.latencies[kind].append(time.perf_counter() - started)
                figures.turns += 1
                if first:
                    first = False
                    figures.warmed += 1
                    if figures.warmed == want_warm:
                        warmed.set()
        await client.delete_session(session.session_id)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def soak(address: str, pids: dict[str, int], metrics_port: int | None, redis_url: str | None,
               sessions: int, minutes: float, turns_per_session: int) -> dict:
    keys_before = redis_keys(redis_url) if redis_url else None
    tasks_before = asyncio_tasks(metrics_port) if metrics_port else None
    figures = Figures()
    warmed = asyncio.Event()
    deadline = time.monotonic() + minutes * 60
    async with sdk.AsyncClient(address) as client:
        workers = [asyncio.create_task(run_session(client, i, deadline, turns_per_session, figures, warmed, sessions))
                   for i in range(sessions)]
        waiting = asyncio.create_task(warmed.wait())
        await asyncio.wait([waiting, *workers], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        start = {name: sample(pid) for name, pid in pids.items()}
        cache_start = embedding_cache_kib(metrics_port)
        started_at = time.monotonic()
        await asyncio.gather(*workers)
        measured_s = time.monotonic() - started_at
    await asyncio.sleep(2.0)  # streams closed and deleted: let the server finish their cleanup
    end = {name: sample(pid) for name, pid in pids.items()}
    cache_end = embedding_cache_kib(metrics_port)
    tasks_after = asyncio_tasks(metrics_port) if metrics_port else None
    keys_after = redis_keys(redis_url) if redis_url else None
    processes = {}
    for name in pids:
        a, b = start.get(name), end.get(name)
        if a is None or b is None:
            processes[name] = {"error": "process gone"}
            continue
        processes[name] = {"rss_mib_start": round(a.rss_kib / 1024, 1), "rss_mib_end": round(b.rss_kib / 1024, 1),
                           "rss_growth_pct": round(100 * (b.rss_kib - a.rss_kib) / a.rss_kib, 2),
                           "fds_start": a.fds, "fds_end": b.fds}
        if name == "orchestrator" and cache_start is not None and cache_end is not None:
            other_kib = (b.rss_kib - a.rss_kib) - (cache_end - cache_start)
            processes[name].update(embedding_cache_mib_start=round(cache_start / 1024, 1),
                                   embedding_cache_mib_end=round(cache_end / 1024, 1),
                                   rss_growth_besides_cache_pct=round(100 * other_kib / a.rss_kib, 2))
    everything = [v for values in figures.latencies.values() for v in values]
    return {
        "sessions": sessions, "minutes": minutes, "measured_s": round(measured_s, 1),
        "turns": figures.turns, "failed_turns": len(figures.failed), "failures": figures.failed[:20],
        "sessions_created": figures.sessions,
        "latency_s": {kind: {"n": len(v), "p50": round(percentile(v, 0.5), 3), "p99": round(percentile(v, 0.99), 3)}
                      for kind, v in {**figures.latencies, "all": everything}.items()},
        "processes": processes,
        "asyncio_tasks": {"before": tasks_before, "after": tasks_after},
        "redis_keys": {"before": keys_before, "after": keys_after},
    }


def verdict(report: dict) -> list[str]:
    missed = []
    for name, p in report["processes"].items():
        if "error" in p:
            missed.append(f"{name}: {p['error']}")
        elif name != "redis" and p.get("rss_growth_besides_cache_pct", p["rss_growth_pct"]) > 100 * RSS_GROWTH_GOAL:
            # Redis holds the data; the orchestrator's bounded embedding cache fills by design.
            besides = p.get("rss_growth_besides_cache_pct")
            missed.append(f"{name}: RSS grew {p['rss_growth_pct']}%"
                          + (f" ({besides}% besides the embedding cache)" if besides is not None else ""))
    tasks = report["asyncio_tasks"]
    if tasks["before"] is not None and tasks["after"] is not None and tasks["after"] > tasks["before"] + TASK_SLACK:
        missed.append(f"orchestrator asyncio tasks {tasks['before']:.0f} → {tasks['after']:.0f}")
    keys = report["redis_keys"]
    before, after = lasting(keys["before"]), lasting(keys["after"])
    if before is not None and after is not None and after != before:
        missed.append(f"Redis keys {keys['before']} → {keys['after']} (deleted sessions left keys)")
    if report["failed_turns"]:
        missed.append(f"{report['failed_turns']} failed turns")
    return missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", help="a running orchestrator; default: start a local stack")
    parser.add_argument("--metrics-port", type=int, help="the orchestrator's /metrics port (with --address)")
    parser.add_argument("--redis-url", help="the stack's Redis (with --address)")
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--turns-per-session", type=int, default=12,
                        help="a session is deleted and replaced after this many turns")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)

    stack = None
    if args.address:
        address, metrics_port, redis_url = args.address, args.metrics_port, args.redis_url
        pids = find_processes()
    else:
        stack = Stack(StackConfig(log_dir=Path(tempfile.mkdtemp(prefix="vita-soak-logs-")))).start()
        address, metrics_port, redis_url = stack.address, stack.orchestrator.metrics_port, stack.redis_url
        pids = {name: s.process.pid for name, s in stack.services.items()}
        pids["orchestrator"] = stack.orchestrator.process.pid
        if stack.redis is not None and stack.redis._process is not None:
            pids["redis"] = stack.redis._process.pid
    try:
        report = asyncio.run(soak(address, pids, metrics_port, redis_url, args.sessions, args.minutes,
                                  args.turns_per_session))
    finally:
        if stack is not None:
            stack.stop()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    missed = verdict(report)
    for line in missed:
        print("MISSED:", line, file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
