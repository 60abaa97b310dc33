"""Faults on real processes: kill -9, stop/continue, a restart on the same port, and the check that
everything else is still up and SERVING."""

from __future__ import annotations

import asyncio
import os
import signal
from contextlib import asynccontextmanager

from apps.launcher import ServiceProcess, Stack, check_serving

# A restarted model service loads its (tiny) weights; on a busy 2-core machine that takes a while.
RESTART_TIMEOUT_S = 120.0
HEALTH_TIMEOUT_S = 15.0

# Processes started to replace a killed member of a session-scoped stack: they belong to that stack now,
# not to the case that started them (tests.faults.conftest.no_leaks).
ADOPTED_PIDS: set[int] = set()


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


async def kill9(service: ServiceProcess) -> None:
    """A crash: no drain, no GOAWAY."""
    service.process.send_signal(signal.SIGKILL)
    await asyncio.to_thread(service.process.wait)


async def restart_service(stack: Stack, name: str) -> ServiceProcess:
    """The model service `name` again, on the port it had, so the orchestrator's channel finds it."""
    old = stack.services[name]
    assert old.process.poll() is not None, f"{name} is still running"
    service = stack.spawn(name, stack._env(VITA_PORT=str(port_of(old.address))))
    try:
        await asyncio.to_thread(service.wait_ready, RESTART_TIMEOUT_S)
    except BaseException:
        await asyncio.to_thread(service.stop, 5)
        raise
    stack.services[name] = service
    ADOPTED_PIDS.add(service.process.pid)
    return service


async def restart_if_dead(stack: Stack, name: str) -> None:
    """Teardown of a case that killed `name`: the next case gets a whole stack even if this one failed."""
    if stack.services[name].process.poll() is not None:
        await restart_service(stack, name)


@asynccontextmanager
async def stopped(service: ServiceProcess):
    """SIGSTOP: the process hangs with its sockets open (what a stuck GPU or a long GC looks like).
    SIGCONT on the way out, whatever the test did."""
    os.kill(service.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(service.process.pid, signal.SIGCONT)


async def assert_all_serving(*services: ServiceProcess) -> None:
    """No process crashed: each is alive and answers health with SERVING."""
    for service in services:
        assert service.process.poll() is None, f"{service.name} exited with code {service.process.returncode}"
        await asyncio.to_thread(check_serving, service.address, HEALTH_TIMEOUT_S, service.credentials)


def stack_processes(stack: Stack) -> list[ServiceProcess]:
    return [*stack.services.values(), stack.orchestrator]
