"""Admission control of the orchestrator against a real Redis: per-tenant sessions and turns per minute,
shared by orchestrator replicas (two Admission objects on one Redis), and turns in flight per process."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as redis

from services.orchestrator.admission import Admission, AdmissionLimits, AdmissionRefused

TTL_S = 3600


def limits(**overrides) -> AdmissionLimits:
    values = dict(max_turns_in_flight=100, tenant_max_sessions=0, tenant_turns_per_minute=0, session_ttl_s=TTL_S)
    return AdmissionLimits(**(values | overrides))


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def replicas(redis_url):
    """Two orchestrators' admissions on the same Redis, and a plain client to look at the keys."""
    made: list[Admission] = []

    def make(**overrides) -> Admission:
        admission = Admission.from_url(redis_url, limits(**overrides))
        made.append(admission)
        return admission

    client = redis.Redis.from_url(redis_url)
    yield make, client
    for admission in made:
        await admission.close()
    await client.aclose()


async def test_session_limit_is_shared_by_replicas_and_freed_by_delete(replicas, tenant):
    make, client = replicas
    first, second = make(tenant_max_sessions=2), make(tenant_max_sessions=2)
    await first.add_session(tenant, "s1")
    await second.add_session(tenant, "s2")
    with pytest.raises(AdmissionRefused) as refused:
        await first.add_session(tenant, "s3")
    assert refused.value.code == "RESOURCE_EXHAUSTED" and "2 sessions, its limit" in refused.value.message
    assert 0 < refused.value.retry_after_ms <= TTL_S * 1000
    await first.add_session("another-" + tenant, "s3")  # other tenants have their own count
    await second.remove_session(tenant, "s1")
    await first.add_session(tenant, "s3")
    for session_id in ("s2", "s3"):
        await first.remove_session(tenant, session_id)
    await first.remove_session("another-" + tenant, "s3")
    assert await client.exists(f"vita:{tenant}:live_sessions") == 0  # deleted sessions leave no key


async def test_sessions_that_expired_no_longer_count(replicas, tenant):
    make, client = replicas
    admission = make(tenant_max_sessions=1)
    await admission.add_session(tenant, "old")
    # As if its last activity were longer ago than the session TTL.
    await client.zadd(f"vita:{tenant}:live_sessions", {"old": 1})
    await admission.add_session(tenant, "new")
    assert await client.zrange(f"vita:{tenant}:live_sessions", 0, -1) == [b"new"]
    await admission.remove_session(tenant, "new")


async def test_turns_per_minute_are_shared_and_a_refused_turn_does_not_count(replicas, tenant):
    make, client = replicas
    first, second = make(tenant_turns_per_minute=2), make(tenant_turns_per_minute=2)
    (await first.start_turn(tenant, "s"))()
    (await second.start_turn(tenant, "s"))()
    for admission in (first, second, first):
        with pytest.raises(AdmissionRefused) as refused:
            await admission.start_turn(tenant, "s")
        assert refused.value.code == "RESOURCE_EXHAUSTED" and "2 turns in the last minute" in refused.value.message
        assert 0 < refused.value.retry_after_ms <= 60_000 and f"retry in {refused.value.retry_after_ms} ms" in refused.value.message
    assert int(await client.get(f"vita:{tenant}:turns_this_minute")) == 2
    assert 0 < await client.pttl(f"vita:{tenant}:turns_this_minute") <= 60_000
    (await first.start_turn("another-" + tenant, "s"))()
    assert first.turns_in_flight == 0 and second.turns_in_flight == 0


async def test_turns_in_flight_are_bounded_per_orchestrator(replicas, tenant):
    make, _ = replicas
    admission, other_replica = make(max_turns_in_flight=2), make(max_turns_in_flight=2)
    releases = [await admission.start_turn(tenant, "a"), await admission.start_turn(tenant, "b")]
    with pytest.raises(AdmissionRefused) as refused:
        await admission.start_turn(tenant, "c")
    assert refused.value.code == "RESOURCE_EXHAUSTED" and "running 2 turns, its limit; retry in 1000 ms" in refused.value.message
    (await other_replica.start_turn(tenant, "c"))()  # another replica has its own slots
    releases[0]()
    releases[0]()  # freeing twice frees once
    assert admission.turns_in_flight == 1
    (await admission.start_turn(tenant, "c"))()
    releases[1]()
    assert admission.turns_in_flight == 0


async def test_a_store_that_is_down_refuses_with_unavailable(tenant):
    admission = Admission.from_url("redis://127.0.0.1:1/0", limits(tenant_turns_per_minute=5))
    try:
        with pytest.raises(AdmissionRefused) as refused:
            await admission.start_turn(tenant, "s")
        assert refused.value.code == "UNAVAILABLE"
        assert admission.turns_in_flight == 0
    finally:
        await admission.close()
