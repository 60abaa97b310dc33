"""Shared fixtures: a real Redis server, and the whole stack as real processes on loopback."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from apps.launcher import Stack, StackConfig
from apps.redis_server import LocalRedis


def _child_pids() -> set[int]:
    me = os.getpid()
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The ppid is the 2nd field after the parenthesised command name.
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == me and fields[0] != "Z":
                children.add(int(entry.name))
    return children


@pytest.fixture(scope="session")
def redis_url():
    with LocalRedis() as url:
        yield url


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """LLM + speech services and an orchestrator on loopback, tiny preset, a private Redis."""
    with Stack(StackConfig(log_dir=tmp_path_factory.mktemp("stack-logs"))) as running:
        yield running


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Fails a test that leaves child processes or asyncio tasks behind (session fixtures excepted)."""
    before = _child_pids()
    yield
    leaked = _child_pids() - before
    assert not leaked, f"test left child processes running: {sorted(leaked)}"


# Cancelled tasks and an in-process server's per-call tasks finish their cleanup after the client has its
# reply; on a busy machine that takes more than a few loop turns.
TASK_SETTLE_S = 2.0


@pytest.fixture(autouse=True)
async def no_task_leaks():
    before = set(asyncio.all_tasks())
    yield
    deadline = time.monotonic() + TASK_SETTLE_S
    while True:
        await asyncio.sleep(0.01)
        leaked = [
            t for t in asyncio.all_tasks() - before
            if t is not asyncio.current_task() and not t.done() and not _is_grpc_internal(t)
        ]
        if not leaked or time.monotonic() > deadline:
            break
    assert not leaked, f"test left asyncio tasks running: {leaked}"


def _is_grpc_internal(task: asyncio.Task) -> bool:
    """grpc.aio finishes a call's status bookkeeping in its own task after the call object is gone, and an
    in-process server keeps one task waiting for the next call."""
    name = getattr(task.get_coro(), "__qualname__", "")
    return "AioCall" in name or name == "AioServer._request_registered_call"
