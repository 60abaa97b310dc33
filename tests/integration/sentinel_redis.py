"""A Redis Sentinel setup for tests, from the bundled redis-server: a master, a replica of it, and one
sentinel watching them, on loopback TCP ports (Sentinel announces host:port pairs; unix sockets will not
do). Failure detection is cut to a second so that a failover takes a few seconds, not half a minute."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from apps.redis_server import bundled_redis_binary

MASTER_NAME = "vita"
START_TIMEOUT_S = 15.0
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(check, what: str, timeout_s: float = START_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (redis.ConnectionError, redis.ResponseError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} not within {timeout_s:.0f} s")


class SentinelRedis:
    def __init__(self, root: Path):
        self.root = root
        self.ports = {"master": free_port(), "replica": free_port(), "sentinel": free_port()}
        self.processes: dict[str, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.ports['sentinel']}/{MASTER_NAME}"

    def client(self, role: str) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.ports[role], socket_timeout=2)

    def _server(self, role: str, *args: str) -> None:
        directory = self.root / role
        directory.mkdir(parents=True, exist_ok=True)
        self.processes[role] = subprocess.Popen(
            [str(bundled_redis_binary()), *args, "--port", str(self.ports[role]), "--bind", "127.0.0.1",
             "--dir", str(directory), "--logfile", str(directory / "redis.log"), "--loglevel", "notice"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def start(self) -> "SentinelRedis":
        try:
            self._server("master", "--save", "", "--appendonly", "no")
            _wait(lambda: self.client("master").ping(), "the master answering")
            self._server("replica", "--save", "", "--appendonly", "no",
                         "--replicaof", "127.0.0.1", str(self.ports["master"]))
            _wait(lambda: self.client("replica").info("replication").get("master_link_status") == "up",
                  "the replica in sync")
            config = self.root / "sentinel.conf"  # Sentinel rewrites its file: it must be its own
            master = self.ports["master"]
            config.write_text(
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 1\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            self._server("sentinel", str(config), "--sentinel")
            # The sentinel finds the replica through the master's INFO (every 10 s at first).
            _wait(lambda: self.client("sentinel").execute_command("SENTINEL", "REPLICAS", MASTER_NAME),
                  "the sentinel seeing the replica", timeout_s=20.0)
            return self
        except BaseException:
            self.stop()
            raise

    def master_port(self) -> int:
        host, port = self.client("sentinel").execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return int(port)

    def kill_master(self) -> None:
        self.processes["master"].send_signal(signal.SIGKILL)
        self.processes["master"].wait()

    def wait_failover(self, timeout_s: float = 20.0) -> None:
        """Until the sentinel names the replica as master and the replica takes writes."""
        _wait(lambda: self.master_port() == self.ports["replica"], "the failover", timeout_s)
        _wait(lambda: self.client("replica").info("replication").get("role") == "master", "the promotion", timeout_s)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
