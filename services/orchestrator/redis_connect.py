"""The orchestrator's Redis client, from one URL (VITA_ORCH_REDIS_URL, or REDIS_URL):

* `redis://[:password@]host:port/db`, `unix:///path/redis.sock?db=0`: one server.
* `rediss://…`: the same over TLS. The server is checked against VITA_ORCH_REDIS_CA (a PEM file; the
  system's CAs when empty); VITA_ORCH_REDIS_CERT and VITA_ORCH_REDIS_KEY add a client certificate (mTLS).
* `redis+sentinel://[:password@]host:port,host:port/master-name[/db]`: Redis Sentinel. The sentinels
  are asked for the master of `master-name`; after a failover the client follows the new master (the
  commands that fail meanwhile fail the turn with UNAVAILABLE, and the next one reaches the new master).
  `rediss+sentinel://` speaks TLS to the sentinels and the master alike, with the same CA settings.
  `?sentinel_password=…` when the sentinels require their own password.

Commands are retried twice within about half a second (a dropped connection, a master that just moved),
then fail: a turn must fail clearly and soon rather than hang through a failover. redis-py's own default
backs off for up to ~14 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CONNECT_TIMEOUT_S = 2.0
# Longer than any command we send, WAIT included (its timeout is VITA_ORCH_REDIS_ACK_TIMEOUT_MS).
COMMAND_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RedisTls:
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    @classmethod
    def from_settings(cls, settings) -> "RedisTls":
        return cls(settings.redis_ca, settings.redis_cert, settings.redis_key)

    def kwargs(self) -> dict:
        options = {"ssl_cert_reqs": "required"}
        if self.ca_file:
            options["ssl_ca_certs"] = self.ca_file
        if self.cert_file:
            options["ssl_certfile"] = self.cert_file
            options["ssl_keyfile"] = self.key_file or None
        return options


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int
    password: str | None
    sentinel_password: str | None
    tls: bool


def parse_sentinel_url(url: str) -> SentinelUrl:
    """redis+sentinel://[:password@]h1:p1,h2:p2/master[/db][?sentinel_password=…]; ValueError if malformed."""
    parts = urlsplit(url)
    netloc = parts.netloc
    password = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        password = unquote(userinfo.split(":", 1)[1] if ":" in userinfo else userinfo) or None
    sentinels = []
    for item in netloc.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError("a Sentinel URL lists host:port pairs, like redis+sentinel://s1:26379,s2:26379/mymaster")
        sentinels.append((host.strip("[]"), int(port)))
    path = [segment for segment in parts.path.split("/") if segment]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("a Sentinel URL names the master after the hosts, like redis+sentinel://s1:26379/mymaster/0")
    query = parse_qs(parts.query)
    return SentinelUrl(
        sentinels=tuple(sentinels), master=path[0], db=int(path[1]) if len(path) == 2 else 0, password=password,
        sentinel_password=(query.get("sentinel_password") or [None])[0],
        tls=parts.scheme == "rediss+sentinel",
    )


def describe_url(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return f"{parts.scheme}://{parts.netloc}{parts.path}"
    return f"{parts.scheme}://***@{parts.netloc.rsplit('@', 1)[1]}{parts.path}"


def _resilience() -> dict:
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": COMMAND_TIMEOUT_S,
        "retry": Retry(ExponentialBackoff(cap=0.25, base=0.05), retries=2),
        "health_check_interval": 30,
    }


def open_redis(url: str, tls: RedisTls = RedisTls()) -> redis.Redis:
    """A client for `url` (see the module's docstring). Nothing is connected until the first command."""
    scheme = urlsplit(url).scheme
    if scheme in SENTINEL_SCHEMES:
        return _open_sentinel(parse_sentinel_url(url), tls)
    options = _resilience()
    if scheme == "rediss":
        options.update(tls.kwargs())
    return redis.Redis.from_url(url, **options)


def _open_sentinel(parsed: SentinelUrl, tls: RedisTls) -> redis.Redis:
    secure = tls.kwargs() | {"ssl": True} if parsed.tls else {}
    sentinel_options = {"socket_connect_timeout": CONNECT_TIMEOUT_S, "socket_timeout": CONNECT_TIMEOUT_S, **secure}
    if parsed.sentinel_password:
        sentinel_options["password"] = parsed.sentinel_password
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs=sentinel_options)
    return sentinel.master_for(parsed.master, db=parsed.db, password=parsed.password, **_resilience(), **secure)


async def close_redis(client: redis.Redis) -> None:
    """Closes the client, and for Sentinel its connections to the sentinels too."""
    await client.aclose()
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        await sentinel.aclose()
