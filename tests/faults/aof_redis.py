"""A Redis that keeps its data in an append-only file, fsynced on every write, and that a test can kill
and start again on the same socket and data directory (a restart of the store, as an operator does it)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import redis

from apps.redis_server import bundled_redis_binary

START_TIMEOUT_S = 10.0


class AofRedis:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.socket = data_dir / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.process: subprocess.Popen | None = None

    def start(self) -> "AofRedis":
        self.process = subprocess.Popen(
            [str(bundled_redis_binary()), "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
             "--dir", str(self.data_dir), "--save", "", "--appendonly", "yes", "--appendfsync", "always",
             "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url).ping():
                    return self
            except (redis.ConnectionError, redis.BusyLoadingError, FileNotFoundError):
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start in time")

    def kill(self) -> None:
        """kill -9: whatever was acknowledged is in the append-only file already (fsync always)."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def keys(self) -> int:
        return redis.Redis.from_url(self.url).dbsize()
