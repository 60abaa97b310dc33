"""The orchestrator's Redis URLs (services/orchestrator/redis_connect.py) against real servers: Sentinel
URLs parsed and refused when malformed, writes acknowledged by a replica (WAIT) before they count as
done, and rediss:// checked against the configured CA (a TLS front to the bundled redis-server, which is
built without TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
from pathlib import Path

import pytest

from services.orchestrator.records import SessionSettings, TurnRecord
from services.orchestrator.redis_connect import RedisTls, describe_url, open_redis, parse_sentinel_url
from services.orchestrator.sessions import SessionStore, StoreUnavailable
from tests.integration.sentinel_redis import SentinelRedis


def test_sentinel_urls_are_parsed():
    parsed = parse_sentinel_url("redis+sentinel://:s3cret@10.0.0.1:26379,[fd00::2]:26380/vita/2?sentinel_password=x")
    assert parsed.sentinels == (("10.0.0.1", 26379), ("fd00::2", 26380))
    assert (parsed.master, parsed.db, parsed.password, parsed.sentinel_password, parsed.tls) == ("vita", 2, "s3cret", "x", False)
    assert parse_sentinel_url("rediss+sentinel://s:26379/vita").tls


@pytest.mark.parametrize("url, problem", [
    ("redis+sentinel://s1:26379", "names the master"),
    ("redis+sentinel://s1:26379/vita/zero", "names the master"),
    ("redis+sentinel://s1/vita", "host:port pairs"),
])
def test_malformed_sentinel_urls_say_what_is_expected(url, problem):
    with pytest.raises(ValueError, match=problem):
        parse_sentinel_url(url)


def test_passwords_stay_out_of_descriptions():
    assert describe_url("redis://:hunter2@cache:6379/0") == "redis://***@cache:6379/0"
    assert "hunter2" not in describe_url("redis+sentinel://:hunter2@s1:26379,s2:26379/vita")


@pytest.fixture
def master_and_replica(tmp_path):
    setup = SentinelRedis(tmp_path).start()
    try:
        yield setup
    finally:
        setup.stop()


def turn(turn_id: str) -> TurnRecord:
    return TurnRecord(turn_id=turn_id, user_text="hi", reply_text="hello", outcome="completed", started_unix_ms=1)


async def test_writes_wait_for_the_replica_when_asked(master_and_replica, caplog):
    url = f"redis://127.0.0.1:{master_and_replica.ports['master']}/0"
    store = SessionStore.from_url(url, 3600, 30.0, min_replica_acks=1, ack_timeout_ms=5000)
    try:
        record = await store.create("t", SessionSettings())
        await store.append_turn("t", record.session_id, turn("a"))
        # Read on the replica right away: WAIT returned only once it had both writes.
        replica = master_and_replica.client("replica")
        assert replica.exists(f"vita:t:session:{record.session_id}")
        assert replica.llen(f"vita:t:history:{record.session_id}") == 1
        assert [t.turn_id for t in await store.history("t", record.session_id)] == ["a"]
    finally:
        await store.close()

    # More acks than there are replicas: the write stands, the wait ends at its timeout with a warning.
    store = SessionStore.from_url(url, 3600, 30.0, min_replica_acks=2, ack_timeout_ms=100)
    try:
        record = await store.create("t", SessionSettings())
        assert "reached 1 of 2 replica(s)" in caplog.text
        assert (await store.get("t", record.session_id)).session_id == record.session_id
    finally:
        await store.close()


async def test_a_sentinel_url_reaches_the_master(master_and_replica):
    store = SessionStore.from_url(master_and_replica.url, 3600, 30.0)
    try:
        record = await store.create("t", SessionSettings())
        assert master_and_replica.client("master").exists(f"vita:t:session:{record.session_id}")
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def tls_front(redis_url: str, cert: Path, key: Path):
    """A TLS listener on loopback that forwards each connection to the plain Redis at `redis_url`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    socket_path = redis_url.removeprefix("unix://")

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def forward(client_reader, client_writer):
        server_reader, server_writer = await asyncio.open_unix_connection(socket_path)
        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))

    server = await asyncio.start_server(forward, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl CLI makes the test CA")
async def test_rediss_checks_the_server_against_the_configured_ca(redis_url, tmp_path):
    from tests.test_tls import issue, make_ca

    make_ca(tmp_path / "ca", "vita redis CA")
    cert, key = issue(tmp_path / "redis", tmp_path / "ca", "redis")
    make_ca(tmp_path / "other-ca", "another CA")
    async with tls_front(redis_url, cert, key) as port:
        trusted = SessionStore.from_url(f"rediss://127.0.0.1:{port}/0", 3600, 30.0, RedisTls(str(tmp_path / "ca.crt")))
        try:
            record = await trusted.create("t", SessionSettings())
            assert (await trusted.get("t", record.session_id)).session_id == record.session_id
        finally:
            await trusted.close()
        # A server whose certificate the configured CA did not sign is refused, as the store being unavailable.
        untrusted = SessionStore.from_url(f"rediss://127.0.0.1:{port}/0", 3600, 30.0,
                                          RedisTls(str(tmp_path / "other-ca.crt")))
        try:
            with pytest.raises(StoreUnavailable):
                await untrusted.ping()
        finally:
            await untrusted.close()


def test_a_plain_url_gets_bounded_timeouts_and_retries():
    client = open_redis("redis://127.0.0.1:1/0")
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_connect_timeout"] and kwargs["socket_timeout"]
    assert kwargs["retry"].get_retries() == 2
