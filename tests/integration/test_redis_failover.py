"""Redis high availability for real: the orchestrator reaches Redis through Sentinel (a master, a replica
and a sentinel from the bundled redis-server), and the master is killed mid-conversation. The turn during
the failover fails cleanly (UNAVAILABLE, with a retry hint), the session and its history survive on the
promoted replica, and the next turn succeeds."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import sdk
from tests.integration.sentinel_redis import SentinelRedis

FAST = sdk.ReconnectPolicy(initial_delay_s=0.1, max_delay_s=0.5, give_up_after_s=60.0)
CONFIG = sdk.SessionConfig(seed=17, max_reply_tokens=6)
CLEAR_STATUS_WITHIN_S = 30.0


@pytest.fixture
def sentinel_redis(tmp_path):
    setup = SentinelRedis(tmp_path).start()
    try:
        yield setup
    finally:
        setup.stop()


def history_on(setup: SentinelRedis, role: str, session_id: str) -> int:
    """Turns of the session's history held by one server, read there directly."""
    client = setup.client(role)
    return sum(client.llen(key) for key in client.keys(f"vita:*:history:{session_id}"))


async def test_a_sentinel_failover_mid_conversation_keeps_the_session_and_its_history(stack, sentinel_redis):
    orchestrator = await asyncio.to_thread(stack.spawn_orchestrator, {
        "VITA_ORCH_REDIS_URL": sentinel_redis.url,
        # A completed turn is on the replica before the client hears of it: the failover cannot lose it.
        "VITA_ORCH_REDIS_MIN_REPLICA_ACKS": "1",
    })
    try:
        async with sdk.AsyncClient(orchestrator.address) as client:
            async with await client.start(CONFIG, reconnect=FAST) as conv:
                before = await conv.ask("Remember seven.", timeout=60)
                assert history_on(sentinel_redis, "replica", conv.session_id) == 1

                await asyncio.to_thread(sentinel_redis.kill_master)
                # Before the sentinel has even noticed: a clear, retryable refusal, not a hang, not INTERNAL.
                with pytest.raises(sdk.TurnFailed) as failed:
                    await conv.ask("Are you there?", timeout=CLEAR_STATUS_WITHIN_S)
                assert failed.value.code == grpc.StatusCode.UNAVAILABLE, failed.value
                assert "retry in" in failed.value.message
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await client.get_session(conv.session_id)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

                await asyncio.to_thread(sentinel_redis.wait_failover)
                after = await conv.ask("Which number?", timeout=60)
                assert after.outcome == "completed"
                session = await client.get_session(conv.session_id)
                assert [turn.turn_id for turn in session.history] == [before.turn_id, after.turn_id]
                assert history_on(sentinel_redis, "replica", conv.session_id) == 2  # the new master
    finally:
        await asyncio.to_thread(orchestrator.stop, 10)
