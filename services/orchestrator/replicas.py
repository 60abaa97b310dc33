"""The replicas of one model service, and which of them a call tries first and second.

An address that lists replicas ("h1:p1,h2:p2") gets one channel per replica, so that a call that failed
before producing anything can be tried again on a replica that is certainly another one (one channel
with round_robin over the list may well pick the failed one again). A single address, or a gRPC target
that resolves to several (dns:///…), is one channel: gRPC's round_robin spreads calls over what it
resolves to, and there is no retry, since the next pick could be the same replica.

Order of the replicas for a call: replicas whose channel is not failing come first; then, for a call
keyed by a session (the LLM, which holds the session's KV cache), rendezvous hashing, so that every
orchestrator replica sends a session to the same LLM replica; for other calls, the replica with the
fewest calls in flight (ties rotate).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from dataclasses import dataclass, field
from typing import Callable, Iterator

import grpc

_FAILING = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)
# A target with a scheme ("dns:///name:port", "ipv4:a,b") is one gRPC target, even with commas in it.
_TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "xds:")


def replica_addresses(address: str) -> list[str]:
    """ "h1:p1, h2:p2" → ["h1:p1", "h2:p2"]; a single address or a scheme target → [it]."""
    address = address.strip()
    if "," not in address or address.startswith(_TARGET_SCHEMES):
        return [address]
    return [part.strip() for part in address.split(",") if part.strip()]


@dataclass(eq=False)
class Replica:
    target: str
    channel: grpc.aio.Channel
    in_flight: int = 0

    @property
    def failing(self) -> bool:
        return self.channel.get_state(try_to_connect=False) in _FAILING

    @contextlib.contextmanager
    def busy(self) -> Iterator["Replica"]:
        self.in_flight += 1
        try:
            yield self
        finally:
            self.in_flight -= 1


@dataclass(eq=False)
class Replicas:
    service: str
    replicas: list[Replica]
    retry: bool = True
    _turn: Iterator[int] = field(default_factory=itertools.count)

    @classmethod
    def open(cls, service: str, address: str, open_channel: Callable[[str], grpc.aio.Channel],
             retry: bool = True) -> "Replicas":
        return cls(service, [Replica(target, open_channel(target)) for target in replica_addresses(address)], retry)

    @property
    def channels(self) -> list[grpc.aio.Channel]:
        return [replica.channel for replica in self.replicas]

    def attempts(self, key: str | None = None) -> list[Replica]:
        """The replica to call, then (with several replicas and retries on) another one for a retry."""
        ranked = self.ranked(key)
        return ranked[:2] if self.retry else ranked[:1]

    def ranked(self, key: str | None = None) -> list[Replica]:
        replicas = self.replicas
        if len(replicas) == 1:
            return list(replicas)
        if key is not None:
            order = sorted(replicas, key=lambda r: _rendezvous_score(key, r.target), reverse=True)
        else:
            start = next(self._turn) % len(replicas)
            rotated = replicas[start:] + replicas[:start]
            order = sorted(rotated, key=lambda r: r.in_flight)  # stable: ties keep the rotation
        return sorted(order, key=lambda r: r.failing)  # stable: healthy replicas first, order kept


def _rendezvous_score(key: str, target: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}|{target}".encode(), digest_size=8).digest(), "big")
