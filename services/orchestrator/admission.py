"""Admission control of the orchestrator: past a bound a request is refused at once, with a retry hint,
instead of waiting without bound.

* Turns in flight on this orchestrator (`max_turns_in_flight`): counted in memory, since each replica
  bounds its own load.
* Per tenant (services/orchestrator/auth.py), counted in Redis so that every orchestrator replica shares
  the counts: sessions that exist at once (`tenant_max_sessions`) and turns started per minute
  (`tenant_turns_per_minute`). 0 = no limit.

Keys (next to the session keys of services/orchestrator/sessions.py):
  vita:{tenant}:live_sessions      sorted set: session id → last activity (ms); members older than the
                                   session TTL have expired with their session and are dropped on the next
                                   count; the set itself expires with the last of them
  vita:{tenant}:turns_this_minute  turns started in the current one-minute window (expires with it)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import redis.asyncio as redis
from redis.exceptions import RedisError

from services.orchestrator.redis_connect import RedisTls, close_redis, open_redis

TURN_WINDOW_MS = 60_000

# KEYS[1] live sessions; ARGV: session id, now ms, session TTL ms, limit. → {1, 0} | {0, ms until one expires}
_ADD_SESSION = """
redis.call('zremrangebyscore', KEYS[1], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[3]))
local limit = tonumber(ARGV[4])
if limit > 0 and redis.call('zcard', KEYS[1]) >= limit then
  local oldest = redis.call('zrange', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(oldest[2]) + tonumber(ARGV[3]) - tonumber(ARGV[2])}
end
redis.call('zadd', KEYS[1], ARGV[2], ARGV[1])
redis.call('pexpire', KEYS[1], ARGV[3])
return {1, 0}
"""
# KEYS[1] turn counter, KEYS[2] live sessions; ARGV: limit, window ms, session id, now ms, session TTL ms.
# → {1, 0} | {0, ms until the window ends}. A refused turn does not count.
_START_TURN = """
local limit = tonumber(ARGV[1])
if limit > 0 then
  local count = redis.call('incr', KEYS[1])
  if count == 1 then redis.call('pexpire', KEYS[1], ARGV[2]) end
  if count > limit then
    redis.call('decr', KEYS[1])
    local left = redis.call('pttl', KEYS[1])
    if left < 0 then redis.call('pexpire', KEYS[1], ARGV[2]); left = tonumber(ARGV[2]) end
    return {0, left}
  end
end
if redis.call('zadd', KEYS[2], 'XX', 'CH', ARGV[4], ARGV[3]) == 1 then redis.call('pexpire', KEYS[2], ARGV[5]) end
return {1, 0}
"""


class AdmissionRefused(Exception):
    """`code` is RESOURCE_EXHAUSTED (a bound) or UNAVAILABLE (the store that keeps the counts is down)."""

    def __init__(self, code: str, message: str, retry_after_ms: int):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms


@dataclass(frozen=True)
class AdmissionLimits:
    max_turns_in_flight: int
    tenant_max_sessions: int
    tenant_turns_per_minute: int
    session_ttl_s: int
    busy_retry_after_ms: int = 1000

    @classmethod
    def from_settings(cls, settings) -> "AdmissionLimits":
        return cls(settings.max_turns_in_flight, settings.tenant_max_sessions, settings.tenant_turns_per_minute,
                   settings.session_ttl_s)


def _seconds(ms: int) -> str:
    return f"{max(1, round(ms / 1000))} s"


class Admission:
    def __init__(self, client: redis.Redis, limits: AdmissionLimits):
        self._redis = client
        self.limits = limits
        self.turns_in_flight = 0
        # Sent by SHA (EVALSHA; loaded again if a restarted or failed-over Redis lacks it): the script text
        # on every turn was most of the turn's bytes to Redis and a visible share of the orchestrator's CPU.
        self._add_session_script = client.register_script(_ADD_SESSION)
        self._start_turn_script = client.register_script(_START_TURN)

    @classmethod
    def from_url(cls, url: str, limits: AdmissionLimits, tls: RedisTls = RedisTls()) -> "Admission":
        return cls(open_redis(url, tls), limits)

    async def close(self) -> None:
        await close_redis(self._redis)

    @staticmethod
    def _key(tenant: str, kind: str) -> str:
        return f"vita:{tenant}:{kind}"

    @property
    def _ttl_ms(self) -> int:
        return self.limits.session_ttl_s * 1000

    async def _script(self, script, keys: list[str], *args) -> tuple[bool, int]:
        try:
            admitted, retry_ms = await script(keys=keys, args=args)
        except (RedisError, OSError):
            raise AdmissionRefused("UNAVAILABLE", f"the session store is unavailable; retry in "
                                                  f"{self.limits.busy_retry_after_ms} ms",
                                   self.limits.busy_retry_after_ms) from None
        return bool(admitted), int(retry_ms)

    async def add_session(self, tenant: str, session_id: str) -> None:
        """Counts a new session against its tenant; raises AdmissionRefused past `tenant_max_sessions`."""
        now = int(time.time() * 1000)
        admitted, retry_ms = await self._script(
            self._add_session_script, [self._key(tenant, "live_sessions")], session_id, now, self._ttl_ms,
            self.limits.tenant_max_sessions,
        )
        if not admitted:
            raise AdmissionRefused(
                "RESOURCE_EXHAUSTED",
                f"this tenant has {self.limits.tenant_max_sessions} sessions, its limit; delete one, or retry in "
                f"{_seconds(retry_ms)} when the oldest idle one expires",
                retry_ms,
            )

    async def remove_session(self, tenant: str, session_id: str) -> None:
        try:
            await self._redis.zrem(self._key(tenant, "live_sessions"), session_id)
        except (RedisError, OSError):
            pass  # the entry expires with the session's TTL

    async def start_turn(self, tenant: str, session_id: str) -> Callable[[], None]:
        """Admits a turn, or raises AdmissionRefused; the returned function frees its slot when it ends."""
        limits = self.limits
        if self.turns_in_flight >= limits.max_turns_in_flight:
            raise AdmissionRefused(
                "RESOURCE_EXHAUSTED",
                f"this server is running {limits.max_turns_in_flight} turns, its limit; retry in "
                f"{limits.busy_retry_after_ms} ms",
                limits.busy_retry_after_ms,
            )
        self.turns_in_flight += 1  # taken before the await: concurrent turns see it
        try:
            admitted, retry_ms = await self._script(
                self._start_turn_script, [self._key(tenant, "turns_this_minute"), self._key(tenant, "live_sessions")],
                limits.tenant_turns_per_minute, TURN_WINDOW_MS, session_id, int(time.time() * 1000), self._ttl_ms,
            )
        except BaseException:
            self.turns_in_flight -= 1
            raise
        if not admitted:
            self.turns_in_flight -= 1
            raise AdmissionRefused(
                "RESOURCE_EXHAUSTED",
                f"this tenant started {limits.tenant_turns_per_minute} turns in the last minute, its limit; "
                f"retry in {retry_ms} ms",
                retry_ms,
            )
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.turns_in_flight -= 1

        return release
