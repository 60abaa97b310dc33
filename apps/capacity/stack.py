"""The measured stack: a private Redis, fake model services, and one real orchestrator, each its own
process (started as apps.launcher starts the real stack, and stopped in the same order)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from apps.launcher import ServiceProcess, wait_all_ready
from apps.redis_server import LocalRedis

START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0


def orchestrator_env(redis_url: str, addresses: dict[str, str]) -> dict[str, str]:
    """The orchestrator as deployed, with the per-process and per-tenant turn limits lifted: the harness
    measures what the process sustains, and the limits would refuse turns long before that."""
    env = {
        "VITA_ORCH_REDIS_URL": redis_url,
        "VITA_ORCH_MAX_TURNS_IN_FLIGHT": "100000",
        "VITA_ORCH_TENANT_MAX_SESSIONS": "0",
        "VITA_ORCH_TENANT_TURNS_PER_MINUTE": "0",
    }
    for name in ("llm", "speech", "audio", "vision"):
        env[f"VITA_ORCH_{name.upper()}_ADDRESS"] = addresses.get(name, "")
    return env


@dataclass
class CapacityStack:
    """`fake_env`: VITA_FAKE_* settings of the fakes; `services`: the fakes to run (llm and speech at least)."""

    fake_env: dict[str, str] = field(default_factory=dict)
    services: tuple[str, ...] = ("llm", "speech")
    log_dir: Path | None = None
    orchestrator_env: dict[str, str] = field(default_factory=dict)
    redis: LocalRedis | None = None
    redis_url: str = ""
    fakes: dict[str, ServiceProcess] = field(default_factory=dict)
    orchestrator: ServiceProcess | None = None

    @property
    def address(self) -> str:
        return self.orchestrator.address

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(VITA_HOST="127.0.0.1", VITA_PORT="0", VITA_METRICS_PORT="0", PYTHONUNBUFFERED="1",
                   VITA_PARENT_PID=str(os.getpid()))
        env.update(extra)
        return env

    def _spawn(self, name: str, module_args: list[str], env: dict[str, str]) -> ServiceProcess:
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            sink, owns = open(self.log_dir / f"{name}.log", "ab"), True
        else:
            sink, owns = sys.stderr.buffer, False
        process = subprocess.Popen([sys.executable, "-m", *module_args], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, start_new_session=True)
        service = ServiceProcess(name, process)
        threading.Thread(target=service._watch_stdout, name=f"{name}-stdout", daemon=True).start()
        threading.Thread(target=service._pump_stderr, args=(sink, owns), name=f"{name}-stderr", daemon=True).start()
        return service

    def start(self) -> "CapacityStack":
        try:
            self.redis = LocalRedis()
            self.redis_url = self.redis.start()
            for name in self.services:
                self.fakes[name] = self._spawn(f"fake-{name}", ["apps.fakes", name], self._env(self.fake_env))
            wait_all_ready(list(self.fakes.values()), START_TIMEOUT_S)
            env = orchestrator_env(self.redis_url, {name: fake.address for name, fake in self.fakes.items()})
            env.update(self.orchestrator_env)
            self.orchestrator = self._spawn("orchestrator", ["services.orchestrator"], self._env(env))
            self.orchestrator.wait_ready(START_TIMEOUT_S)
            return self
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.orchestrator is not None:
            self.orchestrator.stop(STOP_TIMEOUT_S)
        for fake in self.fakes.values():
            if fake.process.poll() is None:
                fake.process.send_signal(signal.SIGTERM)
        for fake in self.fakes.values():
            fake.stop(STOP_TIMEOUT_S)
        if self.redis is not None:
            self.redis.stop()

    def __enter__(self) -> "CapacityStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
