"""Admission control of the LLM: at most max_batch_size running + max_waiting_requests waiting; one more
is refused at once (EngineBusy → RESOURCE_EXHAUSTED with a `retry-after-ms` hint), never queued."""

from __future__ import annotations

import threading

import grpc
import pytest

from services.llm.requests import EngineBusy
from services.llm.server import LLMServicer
from shared.retry_hint import RETRY_AFTER_KEY, retry_after_ms
from shared.tokenizer import QwenTokenizer
from tests.llm.helpers import Collector, prompt_ids, token_request
from vita.common.v1 import common_pb2
from vita.llm.v1 import llm_pb2, llm_pb2_grpc


def blocking_collector(gate: threading.Event) -> Collector:
    """Holds the engine thread at its first token until `gate` opens: its request stays in flight."""
    return Collector(on_token=lambda count: gate.wait(30))


def test_requests_past_the_bound_are_refused_and_accepted_again_once_it_drains(make_engine):
    engine = make_engine(max_batch_size=1, max_waiting_requests=1, busy_retry_after_ms=750)
    gate = threading.Event()
    first, second = blocking_collector(gate), Collector()
    engine.submit(token_request("a", "s1", prompt_ids(6), max_new_tokens=4), first)
    engine.submit(token_request("b", "s2", prompt_ids(6, 1), max_new_tokens=4), second)
    with pytest.raises(EngineBusy) as busy:
        engine.submit(token_request("c", "s3", prompt_ids(6, 2), max_new_tokens=4), Collector())
    assert busy.value.retry_after_ms == 750 and "retry in 750 ms" in str(busy.value)
    gate.set()
    first.wait(), second.wait()
    assert len(first.tokens) == 4 and len(second.tokens) == 4
    assert len(engine_run(engine, "d").tokens) == 4


def engine_run(engine, request_id: str) -> Collector:
    collector = Collector()
    engine.submit(token_request(request_id, "s4", prompt_ids(6, 3), max_new_tokens=4), collector)
    return collector.wait()


def test_without_a_bound_the_engine_takes_every_request(make_engine):
    engine = make_engine(max_batch_size=1)
    collectors = [Collector() for _ in range(6)]
    for index, collector in enumerate(collectors):
        engine.submit(token_request(f"r{index}", f"s{index}", prompt_ids(4, index), max_new_tokens=2), collector)
    assert all(len(c.wait().tokens) == 2 for c in collectors)


async def test_the_servicer_answers_resource_exhausted_with_a_retry_hint(make_engine):
    engine = make_engine(max_batch_size=1, max_waiting_requests=0, busy_retry_after_ms=1200)
    servicer = LLMServicer()
    servicer.attach(engine, QwenTokenizer.from_dir(), hidden_size=engine.model.dims.hidden_size,
                    vocab_size=engine.model.dims.vocab_size, max_context_tokens=engine.max_context_tokens,
                    weights=common_pb2.WeightsInfo())
    server = grpc.aio.server()
    llm_pb2_grpc.add_LLMServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    gate = threading.Event()
    held = blocking_collector(gate)
    engine.submit(token_request("held", "s0", prompt_ids(6), max_new_tokens=2), held)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = llm_pb2_grpc.LLMStub(channel).Generate(llm_pb2.GenerateRequest(
                ctx=common_pb2.CallContext(session_id="s1", turn_id="t1"),
                segments=[llm_pb2.Segment(tokens=llm_pb2.TokenIds(ids=list(prompt_ids(5))))], max_new_tokens=2,
            ))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in call:
                    pass
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at capacity" in refused.value.details() and "retry in 1200 ms" in refused.value.details()
        assert retry_after_ms(refused.value.trailing_metadata()) == 1200
        assert RETRY_AFTER_KEY == "retry-after-ms"
    finally:
        gate.set()
        held.wait()
        await server.stop(0)
