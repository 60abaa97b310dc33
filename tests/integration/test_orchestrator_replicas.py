"""Orchestrator replicas for real: two orchestrator processes over one Redis and two LLM replicas. A
session's turn 1 through one orchestrator and turn 2 through the other reach the same LLM replica, which
still holds the session's KV cache: turn 2 prefills only its new tokens."""

from __future__ import annotations

import asyncio

from tests.client import Client, scrape

SESSIONS = 3
# "<|im_end|>\n<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n" and then some.
NEW_MESSAGE_TOKENS = 20


def requests_served(metrics_port: int) -> float:
    """Generate requests an LLM replica has finished, whatever their outcome."""
    return sum(value for (name, _), value in scrape(metrics_port).items() if name == "vita_llm_requests_total")


def prompt_tokens(metrics_port: int, source: str) -> float:
    return sum(value for (name, labels), value in scrape(metrics_port).items()
               if name == "vita_llm_prompt_tokens_total" and dict(labels).get("source") == source)


async def settled(llms, before: list[float], total: int) -> list[float]:
    """Requests each replica served since `before`, once `total` were counted (a request is counted just
    after its last answer reached the orchestrator)."""
    for _ in range(100):
        served = [requests_served(llm.metrics_port) - b for llm, b in zip(llms, before)]
        if sum(served) >= total:
            return served
        await asyncio.sleep(0.1)
    return served


async def test_turns_through_two_orchestrators_reach_the_same_warm_llm_replica(stack):
    first_llm = stack.services["llm"]
    second_llm = stack.spawn("llm", stack._env())
    orchestrators = []
    try:
        await asyncio.to_thread(second_llm.wait_ready, stack.config.start_timeout_s)
        llms = (first_llm, second_llm)
        # Each orchestrator lists the replicas in its own order: the choice must not depend on it.
        spawned = await asyncio.gather(*(
            asyncio.to_thread(stack.spawn_orchestrator, {"VITA_ORCH_LLM_ADDRESS": ",".join(llm.address for llm in listed)})
            for listed in (llms, llms[::-1])
        ), return_exceptions=True)
        orchestrators = [process for process in spawned if not isinstance(process, BaseException)]
        for failure in spawned:
            if isinstance(failure, BaseException):
                raise failure
        a, b = orchestrators
        cached_before = sum(prompt_tokens(llm.metrics_port, "cache") for llm in llms)
        cached_total = 0
        for index in range(SESSIONS):
            before = [requests_served(llm.metrics_port) for llm in llms]
            async with Client(a.address) as client:
                session_id = await client.create_session(seed=index, max_reply_tokens=8)
                async with client.converse(session_id) as conv:
                    first = (await conv.turn(f"Tell me about number {index}.")).completed
            async with Client(b.address) as client:
                async with client.converse(session_id) as conv:
                    second = (await conv.turn("And then?")).completed
            served = await settled(llms, before, 2)
            assert sorted(served) == [0, 2], f"session {index}: both turns must reach one replica, got {served}"
            assert first.cached_prompt_tokens == 0
            # Turn 1's prompt and reply came from the cache; only the new user message was computed.
            assert second.cached_prompt_tokens >= first.prefilled_prompt_tokens + first.reply_tokens - 1
            assert 0 < second.prefilled_prompt_tokens <= NEW_MESSAGE_TOKENS
            cached_total += second.cached_prompt_tokens
        # What the turns reported is what the LLM replicas counted.
        cached_after = sum(prompt_tokens(llm.metrics_port, "cache") for llm in llms)
        assert cached_after - cached_before == cached_total
    finally:
        for orchestrator in orchestrators:
            await asyncio.to_thread(orchestrator.stop, 10)
        await asyncio.to_thread(second_llm.stop, 10)
