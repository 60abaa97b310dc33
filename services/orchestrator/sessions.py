"""Sessions, history and turn locks in Redis. Everything a restarted orchestrator needs is here.

Keys (all expire `session_ttl_s` after the session's last turn):
  vita:{tenant}:session:{id}   SessionRecord JSON
  vita:{tenant}:history:{id}   list of TurnRecord JSON, oldest first
  vita:{tenant}:turn:{id}      id of the running turn (a lock with a short, refreshed TTL)
  vita:{tenant}:blob:{id}:{sha256}  media bytes referenced by history (re-encoding after a cache miss)
  vita:{tenant}:blobs:{id}     set of the session's blob keys, so that deleting the session deletes them
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Callable

import redis.asyncio as redis
from redis.asyncio.client import Pipeline

from services.orchestrator import metrics
from services.orchestrator.records import SessionRecord, SessionSettings, TurnRecord
from services.orchestrator.redis_connect import RedisTls, close_redis, open_redis

log = logging.getLogger(__name__)
# What a client is told to wait before it retries while the store is down (a restart, a failover).
STORE_RETRY_HINT_MS = 1000

# Release the lock only if we still own it (a crashed owner's lock may have been re-taken).
_RELEASE_IF_OWNER = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end
"""
_REFRESH_IF_OWNER = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end
"""


class SessionNotFound(LookupError):
    pass


class TurnInProgress(RuntimeError):
    def __init__(self, running_turn_id: str):
        super().__init__(running_turn_id)
        self.running_turn_id = running_turn_id


class StoreUnavailable(ConnectionError):
    """Redis cannot be reached (down, restarting, or the network): clients get UNAVAILABLE and retry."""

    def __init__(self):
        super().__init__(f"the session store is unavailable (restarting or failing over); retry in {STORE_RETRY_HINT_MS} ms")


@asynccontextmanager
async def _timed(operation: str):
    started = time.perf_counter()
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
        # Without this a Redis restart reached clients as UNKNOWN, or as a turn that never ended. ReadOnly:
        # a master demoted by a failover, still reached through a connection opened before it.
        raise StoreUnavailable() from None
    finally:
        metrics.REDIS_SECONDS.labels(operation).observe(time.perf_counter() - started)


class SessionStore:
    def __init__(self, client: redis.Redis, session_ttl_s: int, turn_lock_ttl_s: float,
                 min_replica_acks: int = 0, ack_timeout_ms: int = 1000):
        self._redis = client
        self._ttl_s = session_ttl_s
        self._lock_ttl_ms = int(turn_lock_ttl_s * 1000)
        self._acks = min_replica_acks
        self._ack_timeout_ms = ack_timeout_ms

    @classmethod
    def from_url(cls, url: str, session_ttl_s: int, turn_lock_ttl_s: float, tls: RedisTls = RedisTls(),
                 min_replica_acks: int = 0, ack_timeout_ms: int = 1000) -> "SessionStore":
        return cls(open_redis(url, tls), session_ttl_s, turn_lock_ttl_s, min_replica_acks, ack_timeout_ms)

    async def close(self) -> None:
        await close_redis(self._redis)

    async def _write(self, queue: Callable[[Pipeline], object]) -> None:
        """The commands `queue` adds, as one MULTI/EXEC; with replica acks wanted, followed by WAIT on the
        same connection (WAIT counts the replicas that have this connection's writes; inside MULTI it
        would not block), so that what the client is told is done survives a failover."""
        if not self._acks:
            async with self._redis.pipeline(transaction=True) as pipe:
                queue(pipe)
                await pipe.execute()
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.execute_command("MULTI")
            queue(pipe)
            pipe.execute_command("EXEC")
            pipe.execute_command("WAIT", self._acks, self._ack_timeout_ms)
            replies = await pipe.execute()
        acked = replies[-1]
        if acked < self._acks:
            log.warning("a session write reached %d of %d replica(s) within %d ms; a failover now could lose it",
                        acked, self._acks, self._ack_timeout_ms)

    async def ping(self) -> None:
        async with _timed("ping"):
            await self._redis.ping()

    @staticmethod
    def _key(tenant: str, kind: str, session_id: str) -> str:
        return f"vita:{tenant}:{kind}:{session_id}"

    async def create(self, tenant: str, config: SessionSettings) -> SessionRecord:
        record = SessionRecord(
            session_id=uuid.uuid4().hex, tenant=tenant, created_unix_ms=int(time.time() * 1000), config=config
        )
        key = self._key(tenant, "session", record.session_id)
        async with _timed("create"):
            await self._write(lambda pipe: pipe.set(key, record.model_dump_json(), ex=self._ttl_s))
        return record

    async def get(self, tenant: str, session_id: str) -> SessionRecord:
        async with _timed("get"):
            raw = await self._redis.get(self._key(tenant, "session", session_id))
        if raw is None:
            raise SessionNotFound(session_id)
        return SessionRecord.model_validate_json(raw)

    async def history(self, tenant: str, session_id: str) -> list[TurnRecord]:
        async with _timed("history"):
            items = await self._redis.lrange(self._key(tenant, "history", session_id), 0, -1)
        return [TurnRecord.model_validate_json(item) for item in items]

    async def running_turn(self, tenant: str, session_id: str) -> str:
        async with _timed("get"):
            raw = await self._redis.get(self._key(tenant, "turn", session_id))
        return raw.decode() if raw else ""

    async def delete(self, tenant: str, session_id: str) -> bool:
        keys = [self._key(tenant, kind, session_id) for kind in ("session", "history", "turn", "blobs")]
        async with _timed("delete"):
            blobs = await self._redis.smembers(self._key(tenant, "blobs", session_id))
            removed = await self._redis.delete(*keys, *blobs)
        return removed > 0

    async def append_turn(self, tenant: str, session_id: str, turn: TurnRecord) -> None:
        keys = [self._key(tenant, kind, session_id) for kind in ("session", "history")]

        def queue(pipe: Pipeline) -> None:
            pipe.rpush(keys[1], turn.model_dump_json())
            for key in keys:
                pipe.expire(key, self._ttl_s)

        async with _timed("append_turn"):
            await self._write(queue)

    async def acquire_turn(self, tenant: str, session_id: str, turn_id: str) -> None:
        """Marks a turn as running; raises TurnInProgress if another one is (any orchestrator replica)."""
        key = self._key(tenant, "turn", session_id)
        async with _timed("lock"):
            taken = await self._redis.set(key, turn_id, nx=True, px=self._lock_ttl_ms)
            if taken:
                return
            owner = await self._redis.get(key)
        raise TurnInProgress(owner.decode() if owner else "")

    async def refresh_turn(self, tenant: str, session_id: str, turn_id: str) -> None:
        async with _timed("lock"):
            await self._redis.eval(_REFRESH_IF_OWNER, 1, self._key(tenant, "turn", session_id), turn_id, self._lock_ttl_ms)

    async def release_turn(self, tenant: str, session_id: str, turn_id: str) -> None:
        async with _timed("lock"):
            await self._redis.eval(_RELEASE_IF_OWNER, 1, self._key(tenant, "turn", session_id), turn_id)

    async def put_blob(self, tenant: str, content_id: str, data: bytes, *, session_id: str) -> str:
        """Stores media bytes for the session's history; the key is the session's own (not shared by content
        across sessions), so that deleting the session leaves nothing behind."""
        key = self._key(tenant, "blob", f"{session_id}:{content_id}")
        owned = self._key(tenant, "blobs", session_id)

        def queue(pipe: Pipeline) -> None:
            pipe.set(key, data, ex=self._ttl_s)
            pipe.sadd(owned, key)
            pipe.expire(owned, self._ttl_s)

        async with _timed("put_blob"):
            await self._write(queue)
        return key

    async def get_blob(self, key: str) -> bytes | None:
        async with _timed("get_blob"):
            return await self._redis.get(key)
