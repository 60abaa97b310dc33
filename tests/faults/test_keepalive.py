"""Idle streams survive keepalive: every client and server of the stack runs with the same, shortened,
keepalive (VITA_KEEPALIVE_TIME_MS), a Converse stream with an open voice input sits idle for several
ping periods, and a turn then completes on it. A client that pings faster than the servers accept is
cut off by GOAWAY "too_many_pings": what happened to idle streams when the two ends disagreed."""

from __future__ import annotations

import asyncio

import pytest

import sdk
from apps.launcher import Stack, StackConfig

KEEPALIVE = sdk.Keepalive(time_ms=1000, timeout_ms=5000)
IDLE_PERIODS = 5


@pytest.fixture(scope="module")
def keepalive_stack(tmp_path_factory):
    config = StackConfig(
        services=("llm", "speech", "audio"),
        env={"VITA_KEEPALIVE_TIME_MS": str(KEEPALIVE.time_ms), "VITA_KEEPALIVE_TIMEOUT_MS": str(KEEPALIVE.timeout_ms)},
        log_dir=tmp_path_factory.mktemp("keepalive-logs"),
    )
    with Stack(config) as running:
        yield running


async def test_an_idle_converse_stream_outlives_several_keepalive_periods(keepalive_stack):
    async with sdk.AsyncClient(keepalive_stack.address, keepalive=KEEPALIVE) as client:
        session = await client.create_session(sdk.SessionConfig(seed=3, max_reply_tokens=6))
        conv = client.conversation(session.session_id, audio=sdk.AudioFormat(16000, "pcm16"), reconnect=None)
        async with conv:
            # A little silence opens the orchestrator's stream to the audio service, which then idles too.
            assert await conv.append_audio(bytes(16000 * 2 // 5))
            await asyncio.sleep(IDLE_PERIODS * KEEPALIVE.time_ms / 1000)
            assert conv.connected
            with pytest.raises(asyncio.TimeoutError):  # nothing happened while idle: no error, no stream end
                event = await conv.next_event(timeout=0.1)
                pytest.fail(f"unexpected event while idle: {event}")
            result = await (await conv.send_text("Still there?")).result(timeout=120)
    assert result.outcome == "completed" and result.text


async def test_a_server_with_a_slower_keepalive_than_its_client_ends_the_idle_stream(keepalive_stack):
    """The control: the defaults on the server (it accepts a ping every 10 s), 1 s pings from the client,
    which is what idle streams met when the two ends disagreed."""
    slow = keepalive_stack.spawn_orchestrator({"VITA_KEEPALIVE_TIME_MS": "30000"})
    try:
        async with sdk.AsyncClient(slow.address, keepalive=KEEPALIVE) as client:
            session = await client.create_session()
            async with client.conversation(session.session_id, reconnect=None) as conv:
                ended = None
                for _ in range(30):
                    try:
                        event = await conv.next_event(timeout=0.5)
                    except asyncio.TimeoutError:
                        continue
                    if isinstance(event, sdk.StreamEnded):
                        ended = event
                        break
    finally:
        slow.stop(10)
    assert ended is not None and ended.code.name == "UNAVAILABLE", ended
    assert "too many pings" in ended.details.lower()
