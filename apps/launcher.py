"""Runs the whole stack on this machine (`vita up`, the demo, the integration tests): a private Redis,
then every model service as its own OS process in parallel, then the orchestrator; waits for SERVING on
gRPC health; stops everything on exit, leaving no process behind.

Stopping is ordered: the orchestrator first (it refuses new turns, lets the running ones finish and
writes their history), then the model services, then Redis, last, with its data saved. Every child runs
in its own session, so a Ctrl-C in the terminal reaches the launcher alone and the order holds.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared import tls
from shared.grpc_server import READY_PREFIX
from shared.settings import ServiceSettings
from apps.redis_server import LocalRedis

MODEL_SERVICES = ("llm", "speech", "audio", "vision")
# Log lines of a process kept to explain its exit.
LOG_TAIL_LINES = 15
# A process whose stdout closed is exiting: how long to wait for its exit code.
EXIT_WAIT_S = 10.0
# The orchestrator drains (VITA_DRAIN_SECONDS, 10 s by default) before it exits: time beyond that.
STOP_MARGIN_S = 5.0


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen
    address: str = ""
    metrics_port: int = -1
    # TLS credentials to ask its health with (shared.tls.probe_credentials); None = plaintext.
    credentials: grpc.ChannelCredentials | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    # Its last stderr lines (the launcher pumps stderr to the terminal or the log file).
    log_tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LOG_TAIL_LINES))

    def _watch_stdout(self) -> None:
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith(READY_PREFIX):
                info = json.loads(line[len(READY_PREFIX):])
                self.address, self.metrics_port = info["address"], info["metrics_port"]
                self._ready.set()
        self._ready.set()  # exited: unblock the waiter, which then sees no address

    def _pump_stderr(self, sink, owns_sink: bool) -> None:
        """Copies stderr to `sink` (the terminal or the log file) line by line, keeping the last lines."""
        try:
            for raw in self.process.stderr:
                self.log_tail.append(raw.decode(errors="replace").rstrip())
                try:
                    sink.write(raw)
                    sink.flush()
                except (OSError, ValueError):
                    pass  # the terminal went away; keep draining so the child never blocks on its stderr
        finally:
            if owns_sink:
                sink.close()

    @property
    def exited(self) -> bool:
        return self._ready.is_set() and not self.address or self.process.poll() is not None

    def exit_error(self) -> RuntimeError:
        """Why it is gone: its exit code and its last log lines."""
        try:
            code = self.process.wait(EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            code = None
        state = f"exited with code {code}" if code is not None else "closed its output and is exiting"
        time.sleep(0.1)  # the stderr pump reads the last lines the process wrote
        tail = "\n".join(f"  | {line}" for line in self.log_tail) or "  (it wrote nothing to stderr)"
        return RuntimeError(f"service {self.name} {state} before it was ready; its last log lines:\n{tail}")

    def wait_ready(self, timeout_s: float) -> None:
        wait_all_ready([self], timeout_s)

    def stop(self, timeout_s: float) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_all_ready(services: list[ServiceProcess], timeout_s: float) -> None:
    """Waits until every service announced its address and reports SERVING. A service that exits fails
    the wait at once, with its exit code and last log lines; one still starting after `timeout_s` fails
    it then."""
    deadline = time.monotonic() + timeout_s
    while not all(service.address for service in services):
        for service in services:
            if service.exited:
                raise service.exit_error()
        if time.monotonic() > deadline:
            slow = ", ".join(service.name for service in services if not service.address)
            raise RuntimeError(f"service(s) {slow} still starting after {timeout_s:.0f} s; see their logs")
        time.sleep(0.1)
    for service in services:
        check_serving(service.address, max(1.0, deadline - time.monotonic()), service.credentials, service)


def check_serving(address: str, timeout_s: float, credentials: grpc.ChannelCredentials | None = None,
                  process: ServiceProcess | None = None) -> None:
    """Asks gRPC health until it says SERVING (failing at once if `process`, the server, exits)."""
    deadline = time.monotonic() + timeout_s
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if process is not None and process.process.poll() is not None:
                raise process.exit_error()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{address} did not report SERVING in time")
            time.sleep(0.1)


@dataclass
class StackConfig:
    preset: str = "tiny"
    services: tuple[str, ...] = MODEL_SERVICES
    public_host: str = "127.0.0.1"
    public_port: int = 0
    checkpoint: Path | None = None
    # Extra environment for every process (e.g. VITA_ORCH_API_KEYS); wins over the launcher's defaults.
    env: dict[str, str] = field(default_factory=dict)
    # Where each process's stderr goes; None = the launcher's stderr (the terminal).
    log_dir: Path | None = None
    # Where the local Redis keeps its data (append-only file); None = a throwaway Redis (tests).
    # Unused with REDIS_URL.
    data_dir: Path | None = None
    start_timeout_s: float = 180.0
    # Torch threads per model service: with several services on a 2-core machine, oversubscription hurts.
    torch_threads: int = 1
    # Also run the OpenAI-compatible gateway (apps/gateway) in front of the orchestrator, on this port.
    gateway: bool = False
    gateway_port: int = 0
    # Processes per model service (e.g. {"llm": 2}); the orchestrator gets them as a replica list. Default 1.
    replicas: dict[str, int] = field(default_factory=dict)


class Stack:
    def __init__(self, config: StackConfig):
        self.config = config
        self.redis: LocalRedis | None = None
        self.redis_url = ""
        # The first process of each model service, and every replica of each (the first included).
        self.services: dict[str, ServiceProcess] = {}
        self.replica_sets: dict[str, list[ServiceProcess]] = {}
        self.orchestrator: ServiceProcess | None = None
        self.gateway: ServiceProcess | None = None

    @property
    def address(self) -> str:
        return self.orchestrator.address if self.orchestrator else ""

    def _env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            VITA_PRESET=self.config.preset,
            VITA_HOST="127.0.0.1",
            VITA_PORT="0",
            VITA_METRICS_PORT="0",
            VITA_TORCH_THREADS=str(self.config.torch_threads),
            PYTHONUNBUFFERED="1",
            # The child ties its life to ours (shared.grpc_server.die_with_parent): no orphan survives a
            # launcher killed by SIGKILL. Not done with preexec_fn: Python code between fork and exec in a
            # process that runs gRPC threads aborts the child.
            VITA_PARENT_PID=str(os.getpid()),
        )
        # Several model processes share few cores: spinning OpenMP workers would steal each other's CPU.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if self.config.checkpoint is not None:
            env["VITA_CHECKPOINT"] = str(self.config.checkpoint)
        env.update(extra)
        env.update(self.config.env)
        return env

    def spawn(self, name: str, env: dict[str, str], module: str | None = None) -> ServiceProcess:
        sink, owns_sink = getattr(sys.stderr, "buffer", None) or sys.__stderr__.buffer, False
        if self.config.log_dir is not None:
            self.config.log_dir.mkdir(parents=True, exist_ok=True)
            sink, owns_sink = open(self.config.log_dir / f"{name}.log", "ab"), True
        process = subprocess.Popen(
            [sys.executable, "-m", module or f"services.{name}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # Its own session: the terminal's Ctrl-C reaches the launcher only, which stops the stack in
            # order (a service stopped with the orchestrator would fail the turns it is draining).
            start_new_session=True,
        )
        service = ServiceProcess(name, process, credentials=tls.probe_credentials(env))
        threading.Thread(target=service._watch_stdout, name=f"{name}-stdout", daemon=True).start()
        threading.Thread(target=service._pump_stderr, args=(sink, owns_sink), name=f"{name}-stderr", daemon=True).start()
        return service

    def start(self) -> "Stack":
        try:
            self.redis_url = os.environ.get("REDIS_URL", "")
            if not self.redis_url:
                self.redis = LocalRedis(self.config.data_dir)
                self.redis_url = self.redis.start()
            # Model services import torch and load weights: start them all at once.
            for name in self.config.services:
                count = max(1, self.config.replicas.get(name, 1))
                self.replica_sets[name] = [self.spawn(name, self._env()) for _ in range(count)]
                self.services[name] = self.replica_sets[name][0]
            # The orchestrator needs the services' addresses, so it starts once they announced them.
            wait_all_ready(self._model_processes(), self.config.start_timeout_s)
            self.orchestrator = self.spawn_orchestrator()
            if self.config.gateway:
                self.gateway = self.spawn_gateway(port=self.config.gateway_port)
            return self
        except BaseException:
            self.stop()
            raise

    def spawn_orchestrator(self, extra_env: dict[str, str] | None = None, port: int | None = None) -> ServiceProcess:
        """An orchestrator wired to this stack's Redis and services (tests start extra ones: other API
        keys, a dead service address, a restart); the caller stops it."""
        addresses = {f"VITA_ORCH_{name.upper()}_ADDRESS": "" for name in ("audio", "vision")}
        addresses.update(
            {f"VITA_ORCH_{name.upper()}_ADDRESS": ",".join(p.address for p in self.replica_sets.get(name, [service]))
             for name, service in self.services.items()}
        )
        env = self._env(
            VITA_HOST=self.config.public_host,
            VITA_PORT=str(self.config.public_port if port is None else port),
            VITA_ORCH_REDIS_URL=self.redis_url,
            **addresses,
        )
        env.update(extra_env or {})
        orchestrator = self.spawn("orchestrator", env)
        try:
            orchestrator.wait_ready(self.config.start_timeout_s)
        except BaseException:
            orchestrator.stop(5)
            raise
        return orchestrator

    def spawn_gateway(self, orchestrator: str | None = None, port: int = 0,
                      extra_env: dict[str, str] | None = None) -> ServiceProcess:
        """The HTTP gateway (apps/gateway) in front of this stack's orchestrator, or of `orchestrator`; it is
        ready once it announced its address (it announces after it listens). The caller stops it unless
        it is the stack's own (`StackConfig.gateway`)."""
        env = self._env(VITA_HOST=self.config.public_host, VITA_PORT=str(port),
                        VITA_GATEWAY_ORCHESTRATOR=orchestrator or self.address)
        env.update(extra_env or {})
        gateway = self.spawn("gateway", env, module="apps.gateway")
        deadline = time.monotonic() + self.config.start_timeout_s
        while not gateway.address:
            if gateway.exited or time.monotonic() > deadline:
                gateway.stop(5)
                raise gateway.exit_error()
            time.sleep(0.05)
        return gateway

    def stop(self, timeout_s: float | None = None) -> None:
        """In order: the orchestrator drains its turns and exits, then the model services, then Redis
        saves and exits. `timeout_s`: how long each step may take before its processes are killed."""
        if timeout_s is None:
            timeout_s = self._drain_seconds() + STOP_MARGIN_S
        if self.gateway is not None:  # first: it holds client connections to the orchestrator
            self.gateway.stop(timeout_s)
        if self.orchestrator is not None:
            self.orchestrator.stop(timeout_s)
        for service in self._model_processes():
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        for service in self._model_processes():
            service.stop(timeout_s)
        if self.redis is not None:
            self.redis.stop()

    def _model_processes(self) -> list[ServiceProcess]:
        listed = [process for processes in self.replica_sets.values() for process in processes]
        return listed + [process for process in self.services.values() if process not in listed]

    def _drain_seconds(self) -> float:
        default = ServiceSettings.model_fields["drain_seconds"].default
        value = self.config.env.get("VITA_DRAIN_SECONDS") or os.environ.get("VITA_DRAIN_SECONDS")
        try:
            return float(value) if value else default
        except ValueError:
            return default

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
