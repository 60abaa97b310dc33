"""How the orchestrator picks a model service replica (services/orchestrator/replicas.py): session-affine
rendezvous for the LLM with spill and rehash, two random choices for the others, round robin as the
baseline, and replicas found through DNS and re-resolved. Real gRPC servers on loopback addresses
(127.0.0.1 and 127.0.0.2 on one port, as two pods behind one headless Service name)."""

from __future__ import annotations

import collections
import random
import socket

import grpc
import pytest

from services.orchestrator.backends import BackendError, CallIds, TokenPiece
from services.orchestrator.grpc_backends import GrpcLLM
from services.orchestrator.replicas import Replica, Replicas, Routing, dns_name, resolve_host
from shared.channels import open_channel
from tests.orchestrator.test_call_deadlines import FAST, ScriptedLLM
from vita.llm.v1 import llm_pb2_grpc

SESSIONS = [f"session-{index}" for index in range(24)]


def opener(target: str) -> grpc.aio.Channel:
    return open_channel(target, 4 * 1024 * 1024)


class FakeChannel:
    """Just enough of a channel for ranking: its connectivity state."""

    def __init__(self, state=grpc.ChannelConnectivity.READY):
        self.state = state

    def get_state(self, try_to_connect=False):
        return self.state

    async def close(self, grace=None):
        pass


def fake_group(count: int, routing: Routing = Routing(), seed: int = 1) -> Replicas:
    replicas = [Replica(f"10.0.0.{index}:50061", FakeChannel()) for index in range(count)]
    return Replicas("llm", replicas, routing=routing, rng=random.Random(seed))


async def serve_on(host: str, port: int, servicer) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    llm_pb2_grpc.add_LLMServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound


async def two_pods() -> tuple[dict[str, ScriptedLLM], list[grpc.aio.Server], int]:
    """Two scripted LLMs on 127.0.0.1:P and 127.0.0.2:P: one Service name's two pods."""
    servicers = {"127.0.0.1": ScriptedLLM(tokens=1), "127.0.0.2": ScriptedLLM(tokens=1)}
    first, port = await serve_on("127.0.0.1", 0, servicers["127.0.0.1"])
    second, _ = await serve_on("127.0.0.2", port, servicers["127.0.0.2"])
    return servicers, [first, second], port


class StubResolver:
    """Answers the addresses it is told to, and counts the lookups."""

    def __init__(self, *addresses: str):
        self.addresses = list(addresses)
        self.lookups = 0

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups += 1
        assert host == "vita-llm-headless"
        return list(self.addresses)


async def generate_once(llm: GrpcLLM, session_id: str) -> None:
    async for _ in llm.generate(CallIds(session_id, "t1"), [TokenPiece((1, 2))], max_new_tokens=1,
                                temperature=0.0, top_p=1.0):
        pass


def test_dns_addresses_are_parsed_and_a_missing_port_is_refused():
    assert dns_name("dns:///vita-llm:50061") == dns_name("dns://8.8.8.8/vita-llm:50061")
    assert dns_name("dns:///vita-llm:50061").target("10.0.0.7") == "10.0.0.7:50061"
    assert dns_name("dns:///vita-llm:50061").target("fd00::7") == "[fd00::7]:50061"
    assert dns_name("127.0.0.1:1") is None and dns_name("a:1,b:2") is None
    with pytest.raises(ValueError, match="needs a name and a port"):
        dns_name("dns:///vita-llm")


def test_a_session_goes_to_the_same_replica_from_every_orchestrator():
    one, other = fake_group(3), fake_group(3)
    # Another orchestrator may have resolved the same pods in another order.
    other.replicas.reverse()
    picks = {session: one.ranked(session)[0].target for session in SESSIONS}
    assert picks == {session: other.ranked(session)[0].target for session in SESSIONS}
    assert len(set(picks.values())) == 3  # sessions spread over every replica


def test_losing_a_replica_moves_only_its_sessions():
    group = fake_group(3)
    before = {session: group.ranked(session)[0] for session in SESSIONS}
    lost = group.replicas[0]
    lost.channel.state = grpc.ChannelConnectivity.TRANSIENT_FAILURE
    after = {session: group.ranked(session)[0] for session in SESSIONS}
    for session in SESSIONS:
        if before[session] is lost:
            # Rehashed to where rendezvous ranks it next: the same choice on every orchestrator.
            assert after[session] is not lost and after[session] is group.ranked(session)[0]
        else:
            assert after[session] is before[session]
    assert group.ranked(SESSIONS[0])[-1] is lost  # still tried, last


def test_a_saturated_replica_spills_to_the_least_loaded_other():
    group = fake_group(3, Routing(affine=True, spill_in_flight=2))
    owner, *others = group.ranked("s")
    owner.in_flight = 2
    others[0].in_flight, others[1].in_flight = 1, 0
    spilled = group.attempts("s")
    assert spilled == [others[1], owner]  # the owner stays the retry
    owner.in_flight = 1
    assert group.attempts("s")[0] is owner  # below the threshold: back home
    # Everyone as busy as the owner: stay (a cold prefill elsewhere would be no faster).
    owner.in_flight = others[0].in_flight = others[1].in_flight = 5
    assert group.attempts("s")[0] is owner


def test_round_robin_ignores_the_session():
    group = fake_group(2, Routing(affine=False))
    picks = [group.ranked("s")[0].target for _ in range(4)]
    assert picks[0] != picks[1] and picks[0] == picks[2] and picks[1] == picks[3]


def test_two_choices_take_the_less_loaded_pick():
    group = fake_group(2)
    group.replicas[0].in_flight = 3
    assert all(group.ranked()[0] is group.replicas[1] for _ in range(20))
    group = fake_group(4, seed=7)
    loads = [0, 5, 5, 5]
    for replica, load in zip(group.replicas, loads):
        replica.in_flight = load
    firsts = collections.Counter(group.ranked()[0].target for _ in range(400))
    # The idle replica wins every draw it is in (half of them); a busy one only against another busy one.
    assert firsts[group.replicas[0].target] == max(firsts.values())
    assert 150 < firsts[group.replicas[0].target] < 250
    assert len(firsts) == 4  # never a single hot spot


def test_calls_one_after_the_other_alternate_between_idle_replicas():
    group = fake_group(2)
    picks = []
    for _ in range(8):
        with group.ranked()[0].busy() as replica:
            picks.append(replica.target)
    # Every pair of calls uses both (which goes first within a pair is the coin's).
    assert all(picks[index] != picks[index + 1] for index in range(0, 8, 2)), picks


async def test_a_dns_name_resolved_to_two_pods_keeps_sessions_on_their_pod_and_follows_changes():
    servicers, servers, port = await two_pods()
    resolver = StubResolver("127.0.0.1", "127.0.0.2")
    groups = [Replicas.open("llm", f"dns:///vita-llm-headless:{port}", opener, resolver=resolver, refresh_s=60)
              for _ in range(2)]
    llms = [GrpcLLM(group, FAST) for group in groups]
    try:
        for session in SESSIONS[:8]:
            before = {ip: s.calls for ip, s in servicers.items()}
            await generate_once(llms[0], session)  # turn 1 through one orchestrator
            await generate_once(llms[1], session)  # turn 2 through the other
            served = {ip: s.calls - before[ip] for ip, s in servicers.items()}
            assert sorted(served.values()) == [0, 2], (session, served)  # both turns on one pod
        assert all(s.calls > 0 for s in servicers.values())  # and sessions on both pods
        assert {r.target for r in groups[0].replicas} == {f"127.0.0.1:{port}", f"127.0.0.2:{port}"}

        # The pod on 127.0.0.1 goes away: the next resolution drops it and every session lands on the other.
        resolver.addresses = ["127.0.0.2"]
        await groups[0].refresh()
        assert [r.target for r in groups[0].replicas] == [f"127.0.0.2:{port}"]
        before = servicers["127.0.0.2"].calls
        for session in SESSIONS[:8]:
            await generate_once(llms[0], session)
        assert servicers["127.0.0.2"].calls - before == 8

        # A lookup that fails keeps what was known.
        resolver.addresses = []
        await groups[0].refresh()
        assert [r.target for r in groups[0].replicas] == [f"127.0.0.2:{port}"]
    finally:
        for group in groups:
            await group.close()
        for server in servers:
            await server.stop(0)


async def test_a_name_that_resolves_to_nothing_fails_the_call_as_unavailable():
    group = Replicas.open("llm", "dns:///vita-llm-headless:1", opener, resolver=StubResolver(), refresh_s=60)
    try:
        with pytest.raises(BackendError) as raised:
            await generate_once(GrpcLLM(group, FAST), "s")
        assert raised.value.code == "UNAVAILABLE" and "resolves to no address" in raised.value.message
    finally:
        await group.close()


async def test_localhost_resolves_for_real():
    server, port = await serve_on("127.0.0.1", 0, ScriptedLLM(tokens=1))
    group = Replicas.open("llm", f"dns:///localhost:{port}", opener, refresh_s=60)
    try:
        try:
            addresses = await resolve_host("localhost", port)
        except socket.gaierror:
            pytest.skip("this machine cannot resolve localhost")
        assert "127.0.0.1" in addresses
        await generate_once(GrpcLLM(group, FAST), "s")
        assert f"127.0.0.1:{port}" in {r.target for r in group.replicas}
    finally:
        await group.close()
        await server.stop(0)
