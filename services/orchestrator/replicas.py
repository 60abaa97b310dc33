"""The replicas of one model service, and which of them a call tries first and second.

Where the replicas come from:
* a list ("h1:p1,h2:p2"): fixed, one channel per replica;
* a DNS name ("dns:///vita-llm-headless:50061", a Kubernetes headless Service): resolved to every address
  it has (A and AAAA records), one channel per address, re-resolved every `refresh_s` and at once when
  every known replica is failing. Pods that come and go join and leave the set; a channel that left
  is closed after a grace period, so that the calls running on it may finish.
* a single address, or another gRPC target ("ipv4:a,b", "unix:…"): one channel, gRPC's round_robin over
  what it holds, no retry (the next pick could be the same replica).

One channel per replica is what makes a retry go to a replica that is certainly another one, and what
lets the orchestrator choose the replica itself:
* a call keyed by a session (the LLM, which holds the session's KV cache): rendezvous hashing of the
  session id over the resolved set, so that every orchestrator replica sends a session to the same LLM
  replica, and losing a replica moves only the sessions it held (they are re-prefilled from history).
  When that replica is saturated (this orchestrator has `spill_in_flight` calls running on it), the call
  spills to the least loaded other replica: a cold prefill there beats queueing behind a full batch.
  `affine=False` sends keyed calls round robin instead (the baseline the affinity is measured against).
* other calls (speech, vision, audio): the less loaded of two random picks, by calls in flight from this
  orchestrator ("power of two choices": near the best spread without every orchestrator herding onto the
  same least-loaded replica); between two equally loaded picks, the one that has started fewer calls.
Replicas whose channel is failing go last, whatever the policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterator

import grpc

from services.orchestrator.backends import BackendError

log = logging.getLogger(__name__)

_FAILING = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)
# A target with a scheme ("ipv4:a,b") is one gRPC target, even with commas in it. dns: is resolved here.
_TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "xds:")
# A replica that left the DNS answer keeps its channel this long for the calls still running on it (a
# reply streams for seconds to minutes); new calls no longer go there.
RETIRE_GRACE_S = 120.0
# Re-resolving because every replica is failing happens at most this often.
MIN_RERESOLVE_S = 1.0

# (host, port) → the addresses it resolves to, as strings ("10.0.0.7", "fd00::7").
Resolver = Callable[[str, int], Awaitable[list[str]]]


def replica_addresses(address: str) -> list[str]:
    """ "h1:p1, h2:p2" → ["h1:p1", "h2:p2"]; a single address or a scheme target → [it]."""
    address = address.strip()
    if "," not in address or address.startswith(_TARGET_SCHEMES):
        return [address]
    return [part.strip() for part in address.split(",") if part.strip()]


@dataclass(frozen=True)
class DnsName:
    host: str
    port: int

    def target(self, ip: str) -> str:
        return f"[{ip}]:{self.port}" if ":" in ip else f"{ip}:{self.port}"


def dns_name(address: str) -> DnsName | None:
    """ "dns:///name:port" (or "dns://authority/name:port": the authority is ignored, the system resolver
    answers) → DnsName; anything else → None. Raises ValueError without a port."""
    address = address.strip()
    if not address.startswith("dns:"):
        return None
    rest = address[len("dns:"):]
    if rest.startswith("//"):
        rest = rest[2:].split("/", 1)[1] if "/" in rest[2:] else ""
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{address[:200]!r}: a DNS address needs a name and a port, like dns:///vita-llm:50061")
    return DnsName(host.strip("[]"), int(port))


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` has, through the event loop's resolver (getaddrinfo in a thread)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


@dataclass(frozen=True)
class Routing:
    # Keyed calls (the LLM's, by session): rendezvous hashing (True) or round robin (False).
    affine: bool = True
    # Calls in flight from this orchestrator at which a session's replica counts as saturated and the call
    # goes to the least loaded other replica; 0 = never spill.
    spill_in_flight: int = 0


@dataclass(eq=False)
class Replica:
    target: str
    channel: grpc.aio.Channel
    in_flight: int = 0
    # Calls ever started here: breaks ties between equally idle replicas, so that calls one after the
    # other alternate instead of following a coin.
    started: int = 0
    _stubs: dict = field(default_factory=dict)

    @property
    def failing(self) -> bool:
        return self.channel.get_state(try_to_connect=False) in _FAILING

    def stub(self, stub_class: type):
        """One stub per service class on this replica's channel, made on first use."""
        stub = self._stubs.get(stub_class)
        if stub is None:
            stub = self._stubs[stub_class] = stub_class(self.channel)
        return stub

    def hold(self) -> None:
        self.in_flight += 1
        self.started += 1

    @contextlib.contextmanager
    def busy(self) -> Iterator["Replica"]:
        self.hold()
        try:
            yield self
        finally:
            self.in_flight -= 1


@dataclass(eq=False)
class Replicas:
    service: str
    replicas: list[Replica]
    retry: bool = True
    routing: Routing = field(default_factory=Routing)
    # Set for a DNS address: how to open a channel to a newly resolved replica, and how to resolve.
    dns: DnsName | None = None
    open_channel: Callable[[str], grpc.aio.Channel] | None = None
    resolver: Resolver = resolve_host
    refresh_s: float = 5.0
    rng: random.Random = field(default_factory=random.Random)
    _turn: Iterator[int] = field(default_factory=itertools.count)
    _resolved_at: float = -1.0
    _refresher: asyncio.Task | None = None
    _resolving: asyncio.Lock = field(default_factory=asyncio.Lock)
    _retiring: set = field(default_factory=set)

    @classmethod
    def open(cls, service: str, address: str, open_channel: Callable[[str], grpc.aio.Channel],
             retry: bool = True, routing: Routing | None = None, resolver: Resolver | None = None,
             refresh_s: float = 5.0) -> "Replicas":
        routing = routing or Routing()
        name = dns_name(address)
        if name is not None:
            return cls(service, [], retry, routing, dns=name, open_channel=open_channel,
                       resolver=resolver or resolve_host, refresh_s=refresh_s)
        targets = replica_addresses(address)
        return cls(service, [Replica(target, open_channel(target)) for target in targets], retry, routing)

    @property
    def channels(self) -> list[grpc.aio.Channel]:
        return [replica.channel for replica in self.replicas]

    # ----- the set -----

    async def ready(self) -> None:
        """Before choosing: a DNS address is resolved on first use (then every `refresh_s` in the
        background), and again now if every replica it gave is failing (pods replaced)."""
        if self.dns is None:
            return
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_forever(), name=f"resolve-{self.service}")
        stale = not self.replicas or all(replica.failing for replica in self.replicas)
        if self._resolved_at < 0 or (stale and time.monotonic() - self._resolved_at >= MIN_RERESOLVE_S):
            await self.refresh()
        if not self.replicas:
            raise BackendError("UNAVAILABLE", f"the {self.service} service has no replicas: "
                                              f"{self.dns.host} resolves to no address; try again shortly")

    async def refresh(self) -> None:
        """Re-resolves the DNS name; replicas that joined get a channel, those that left are retired. A
        failed lookup keeps the set as it was (a resolver hiccup must not empty it)."""
        async with self._resolving:
            try:
                addresses = await self.resolver(self.dns.host, self.dns.port)
            except (OSError, UnicodeError) as error:
                log.warning("resolving %s for the %s service failed (%s); keeping %d replica(s)",
                            self.dns.host, self.service, error, len(self.replicas))
                self._resolved_at = time.monotonic()
                return
            self._resolved_at = time.monotonic()
            targets = [self.dns.target(ip) for ip in addresses]
            if not targets:
                log.warning("%s resolves to no address; keeping %d %s replica(s)", self.dns.host,
                            len(self.replicas), self.service)
                return
            known = {replica.target: replica for replica in self.replicas}
            kept = [known[target] if target in known else Replica(target, self.open_channel(target))
                    for target in targets]
            for gone in set(known) - set(targets):
                self._retire(known[gone])
            if set(targets) != set(known):
                log.info("%s replicas of %s: %s", self.service, self.dns.host, ", ".join(targets))
            self.replicas = kept

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.refresh()

    def _retire(self, replica: Replica) -> None:
        task = asyncio.create_task(replica.channel.close(grace=RETIRE_GRACE_S), name=f"retire-{replica.target}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for replica in self.replicas:
            await replica.channel.close()

    # ----- the choice -----

    def attempts(self, key: str | None = None) -> list[Replica]:
        """The replica to call, then (with several replicas and retries on) another one for a retry."""
        ranked = self.ranked(key)
        return ranked[:2] if self.retry else ranked[:1]

    def ranked(self, key: str | None = None) -> list[Replica]:
        replicas = self.replicas
        if len(replicas) <= 1:
            return list(replicas)
        healthy = [replica for replica in replicas if not replica.failing]
        failing = [replica for replica in replicas if replica.failing]
        pool = healthy or failing  # all failing: try them anyway, in the same order
        if len(pool) == 1:
            order = pool
        elif key is not None and self.routing.affine:
            order = self._affine(key, pool)
        elif key is not None:
            start = next(self._turn) % len(pool)
            order = pool[start:] + pool[:start]
        else:
            order = self._two_choices(pool)
        return order + (failing if healthy else [])

    def _affine(self, key: str, pool: list[Replica]) -> list[Replica]:
        order = sorted(pool, key=lambda r: _rendezvous_score(key, r.target), reverse=True)
        owner, spill = order[0], self.routing.spill_in_flight
        if spill and owner.in_flight >= spill:
            least = min(order[1:], key=lambda r: r.in_flight)
            if least.in_flight < owner.in_flight:
                # The owner stays the retry: its cache is still the session's best.
                return [least, owner] + [r for r in order[1:] if r is not least]
        return order

    def _two_choices(self, pool: list[Replica]) -> list[Replica]:
        first, second = self.rng.sample(pool, 2)
        if (second.in_flight, second.started) < (first.in_flight, first.started):
            first, second = second, first
        return [first, second] + [r for r in pool if r is not first and r is not second]


def _rendezvous_score(key: str, target: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}|{target}".encode(), digest_size=8).digest(), "big")
