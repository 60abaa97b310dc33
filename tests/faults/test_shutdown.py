"""Stopping `vita up` mid-turn loses nothing: the signal reaches the whole process group, as a terminal's
Ctrl-C or a service manager's stop does, yet the running turn is drained and its history written before
the model services stop and Redis stops last with its data saved. A second `vita up` on the same data
directory (or the same REDIS_URL) has the session with the delivered part of the reply."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

import sdk
from apps.redis_server import LocalRedis
from tests.faults.aof_redis import AofRedis
from tests.integration.test_cli import alive, descendants

START_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 90.0


class Up:
    """`vita up` in its own process group, as a shell runs a foreground job."""

    def __init__(self, data_dir: Path, log_dir: Path, env: dict[str, str]):
        self.process = subprocess.Popen(
            # Text turns need only these: two fewer processes to start on a 2-core machine.
            [sys.executable, "-m", "apps.cli", "up", "--port", "0", "--services", "llm,speech",
             "--data-dir", str(data_dir), "--log-dir", str(log_dir)],
            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.address = ""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.address and time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                self.stop(signal.SIGTERM)
                pytest.fail(f"vita up exited early: {''.join(self.lines)}")
            self.lines.append(line)
            if line.startswith("Assistant API on "):
                self.address = line.split()[3]
        assert self.address, "vita up did not print its address"
        self.children = descendants(self.process.pid)

    def stop(self, signum: int) -> int:
        """Signals the whole group, as the terminal does; returns vita up's exit code once all is gone."""
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass
        try:
            code = self.process.wait(STOP_TIMEOUT_S)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            self.lines.extend(self.process.stdout.readlines())
            self.process.stdout.close()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in self.children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in self.children if alive(pid)], "processes left behind"
        return code


async def long_turn_stopped_midway(up: Up, signum: int) -> tuple[str, str]:
    """Starts a long reply, signals the stack once audio flows, and reads what arrives until the stream
    ends. Returns the session id and the reply text the client received."""
    async with sdk.AsyncClient(up.address) as client:
        session = await client.create_session(sdk.SessionConfig(seed=11, max_reply_tokens=40))
        async with client.conversation(session.session_id, reconnect=None) as conv:
            turn = await conv.send_text("Tell me a long story about a lighthouse keeper and the sea.")
            received, signalled = [], False
            async for event in turn.events():
                if isinstance(event, sdk.TextDelta):
                    received.append(event.text)
                if isinstance(event, sdk.AudioChunk) and not signalled:
                    os.killpg(up.process.pid, signum)  # mid-turn: the reply is still being generated
                    signalled = True
            assert signalled, "the turn ended before any audio"
    return session.session_id, "".join(received)


async def stored_reply(address: str, session_id: str) -> sdk.HistoryTurn:
    async with sdk.AsyncClient(address) as client:
        session = await client.get_session(session_id)
    assert len(session.history) == 1, session.history
    return session.history[0]


async def test_ctrl_c_with_the_embedded_redis_drains_the_turn_and_keeps_it(tmp_path):
    """Ctrl-C: SIGINT to every process of the terminal's foreground group. The turn finishes within
    the drain time (10 s by default) and is stored whole."""
    data_dir = tmp_path / "data"
    up = Up(data_dir, tmp_path / "logs-1", {})
    try:
        session_id, received = await long_turn_stopped_midway(up, signal.SIGINT)
    finally:
        code = up.stop(signal.SIGINT)
    assert code == 0, "".join(up.lines)
    assert (data_dir / "redis" / "appendonly.aof").is_file()

    again = Up(data_dir, tmp_path / "logs-2", {})
    try:
        turn = await stored_reply(again.address, session_id)
    finally:
        again.stop(signal.SIGTERM)
    assert turn.outcome in ("completed", "cancelled")
    assert turn.reply_text and received.startswith(turn.reply_text)
    print(f"kept {len(turn.reply_text)} of {len(received)} characters received ({turn.outcome})")


async def test_sigterm_with_redis_url_cuts_a_turn_past_the_drain_time_and_keeps_what_was_heard(tmp_path):
    """A stop that the drain time does not cover: the turn is cut, and history keeps the part of the
    reply that was delivered (the text whose audio had played)."""
    store = AofRedis(Path(os.environ.get("TMPDIR", "/tmp")) / f"vita-aof-{os.getpid()}")
    store.data_dir.mkdir(exist_ok=True)
    store.start()
    try:
        env = {"REDIS_URL": store.url, "VITA_DRAIN_SECONDS": "1"}
        up = Up(tmp_path / "unused", tmp_path / "logs-1", env)
        try:
            session_id, received = await long_turn_stopped_midway(up, signal.SIGTERM)
        finally:
            code = up.stop(signal.SIGTERM)
        assert code == 0, "".join(up.lines)
        assert store.process.poll() is None  # not ours to stop
        again = Up(tmp_path / "unused", tmp_path / "logs-2", env)
        try:
            turn = await stored_reply(again.address, session_id)
        finally:
            again.stop(signal.SIGTERM)
    finally:
        store.stop()
        subprocess.run(["rm", "-rf", str(store.data_dir)], check=False)
    assert turn.outcome in ("completed", "cancelled")
    assert turn.reply_text and received.startswith(turn.reply_text)
    print(f"kept {len(turn.reply_text)} of {len(received)} characters received ({turn.outcome})")


def test_a_redis_left_behind_by_a_killed_launcher_is_stopped_before_a_new_one_starts(tmp_path):
    """SIGKILL of `vita up` cannot stop its Redis; the next `vita up` on that data directory must not run a
    second server on the same append-only file."""
    orphan = LocalRedis(tmp_path / "data")
    redis.Redis.from_url(orphan.start()).set("session", "kept")
    orphan_pid = orphan._process.pid
    orphan._lock.close()  # what the launcher's death does; its Redis runs on
    orphan._lock = None
    successor = LocalRedis(tmp_path / "data")
    try:
        assert redis.Redis.from_url(successor.start()).get("session") == b"kept"
        assert orphan._process.wait(5) == 0  # it was stopped, cleanly
        assert successor._process.pid != orphan_pid
    finally:
        successor.stop()
        orphan.stop()


async def _health(address: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.aio.AioRpcError as error:
            return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def test_a_draining_orchestrator_refuses_new_turns_finishes_the_running_one_and_ends_the_stream(stack):
    orchestrator = await asyncio.to_thread(stack.spawn_orchestrator)
    try:
        async with sdk.AsyncClient(orchestrator.address) as client:
            session = await client.create_session(sdk.SessionConfig(seed=5, max_reply_tokens=40))
            async with client.conversation(session.session_id, reconnect=None) as conv:
                running = await conv.send_text("Tell me a long story about a lighthouse keeper and the sea.")
                async for event in running.events():
                    if isinstance(event, sdk.AudioChunk):
                        break
                orchestrator.process.send_signal(signal.SIGTERM)
                for _ in range(100):  # health turns NOT_SERVING as the drain begins
                    if await _health(orchestrator.address) != "SERVING":
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.2)
                with pytest.raises(sdk.TurnFailed) as refused:
                    await (await conv.send_text("And another one?")).result(timeout=30)
                result = await running.result(timeout=60)
                ended = None
                while ended is None:
                    event = await conv.next_event(timeout=30)
                    ended = event if isinstance(event, sdk.StreamEnded) else None
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE and "shutting down" in refused.value.message
        assert result.outcome in ("completed", "cancelled") and result.text
        assert ended.code == grpc.StatusCode.UNAVAILABLE and "shutting down" in ended.details
        assert await asyncio.to_thread(orchestrator.process.wait, 30) == 0
    finally:
        await asyncio.to_thread(orchestrator.stop, 10)
    async with sdk.AsyncClient(stack.address) as client:
        stored = await client.get_session(session.session_id)
    [kept] = stored.history  # the refused turn left nothing
    assert kept.reply_text and result.text.startswith(kept.reply_text)
    if result.outcome == "completed":  # it finished within the drain time: stored whole
        assert kept.reply_text == result.text
