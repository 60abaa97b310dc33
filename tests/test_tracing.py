"""Tracing: one trace per turn, spanning the orchestrator and every service the turn used.

The services run in this process (grpc.aio servers on port 0, tiny engines) so that they can share one
TracerProvider with an in-memory exporter; the context still travels the real way, in gRPC metadata
over loopback.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from shared import tracing
from shared.channels import open_channel
from shared.grpc_server import MetricsInterceptor, channel_options
from shared.settings import MiB, ServiceSettings
from tests.client import Client
from vita.assistant.v1 import assistant_pb2
from vita.common.v1 import common_pb2
from vita.llm.v1 import llm_pb2, llm_pb2_grpc

LLM_GENERATE = "vita.llm.v1.LLM/Generate"
SPEECH_SYNTHESIZE = "vita.speech.v1.Speech/Synthesize"
CONVERSE = "vita.assistant.v1.Assistant/Converse"


def test_tracing_is_off_by_default():
    assert tracing.setup("llm", ServiceSettings()) is None
    assert not tracing.enabled()
    assert tracing.server_interceptors() == [] and tracing.client_interceptors() == []
    # No-op spans: the turn wrapper costs nothing when off.
    assert not tracing.tracer().start_span("x").get_span_context().is_valid


async def _serve(app) -> tuple[grpc.aio.Server, str]:
    """What shared.grpc_server.serve does for one app, minus signals and the process-wide parts."""
    server = grpc.aio.server(
        options=channel_options(64 * MiB),
        interceptors=[*tracing.server_interceptors(), MetricsInterceptor(app.metrics)],
    )
    app.register(server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await app.load()
    return server, f"127.0.0.1:{port}"


async def _finished_spans(exporter: InMemorySpanExporter, predicate, timeout_s: float = 5.0):
    """Spans end a moment after the client saw turn_completed (the turn's cleanup, the speech stream's
    close); wait for them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        spans = exporter.get_finished_spans()
        if predicate(spans) or loop.time() > deadline:
            return spans
        await asyncio.sleep(0.02)


async def test_one_trace_per_turn_across_orchestrator_llm_and_speech(redis_url):
    from services.llm.config import LLMSettings
    from services.llm.server import LLMApp
    from services.orchestrator.config import OrchestratorSettings
    from services.orchestrator.server import OrchestratorApp
    from services.speech.config import SpeechSettings
    from services.speech.server import SpeechApp

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    common = ServiceSettings(preset="tiny", metrics_port=-1)
    apps, servers = [], []
    try:
        for app in (LLMApp(common, LLMSettings()), SpeechApp(common, SpeechSettings())):
            apps.append(app)
            servers.append(await _serve(app))
        (_, llm_address), (_, speech_address) = servers
        orchestrator = OrchestratorApp(
            common,
            OrchestratorSettings(llm_address=llm_address, speech_address=speech_address, audio_address="",
                                 vision_address="", redis_url=redis_url),
        )
        apps.append(orchestrator)
        servers.append(await _serve(orchestrator))
        address = servers[-1][1]

        async with Client(address) as client:
            session_id = await client.create_session(seed=3, max_reply_tokens=8)
            async with client.converse(session_id) as conv:
                turns = [await conv.turn("Hello there, how are you?", turn_id=f"t{i}") for i in range(2)]
        assert all(turn.completed and turn.completed.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED for turn in turns)
        assert all(turn.of("audio") for turn in turns)

        def turn_spans(spans):
            return [s for s in spans if s.name == "turn"]

        def complete(spans):
            ids = {s.context.trace_id for s in turn_spans(spans)}
            # The Converse span ends when the client closes its stream, after the turns.
            return len(ids) == 2 and any(s.name == CONVERSE for s in spans) and all(
                sum(1 for s in spans if s.context.trace_id == trace_id and s.name == SPEECH_SYNTHESIZE) == 2
                for trace_id in ids
            )

        spans = await _finished_spans(exporter, complete)
        roots = turn_spans(spans)
        assert sorted(s.attributes["vita.turn_id"] for s in roots) == ["t0", "t1"]
        # One trace per turn, not one per Converse stream.
        assert roots[0].context.trace_id != roots[1].context.trace_id
        converse = [s for s in spans if s.name == CONVERSE and s.kind == SpanKind.SERVER]
        assert len(converse) == 1

        for root in roots:
            assert root.parent is None, "a turn is the root of its own trace"
            assert [link.context.span_id for link in root.links] == [converse[0].context.span_id]
            assert root.attributes["vita.session_id"] == session_id
            assert root.attributes["vita.turn.outcome"] == "completed"
            in_trace = [s for s in spans if s.context.trace_id == root.context.trace_id]
            by_id = {s.context.span_id: s for s in in_trace}
            for method in (LLM_GENERATE, SPEECH_SYNTHESIZE):
                client_side = [s for s in in_trace if s.name == method and s.kind == SpanKind.CLIENT]
                server_side = [s for s in in_trace if s.name == method and s.kind == SpanKind.SERVER]
                assert len(client_side) == 1 and len(server_side) == 1, (method, [s.name for s in in_trace])
                # turn (orchestrator) → CLIENT call (orchestrator) → SERVER handler (llm / speech)
                assert client_side[0].parent.span_id == root.context.span_id
                assert server_side[0].parent.span_id == client_side[0].context.span_id
                assert server_side[0].parent.is_remote, "the context crossed the wire in gRPC metadata"
                assert server_side[0].attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
                assert client_side[0].attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
            assert all(s.parent is None or s.parent.span_id in by_id for s in in_trace), "no dangling parent"

        # A failed call is marked on both sides, with its code.
        exporter.clear()
        channel = open_channel(llm_address, 64 * MiB)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                stub = llm_pb2_grpc.LLMStub(channel)
                async for _ in stub.Generate(llm_pb2.GenerateRequest(ctx=common_pb2.CallContext(), max_new_tokens=1)):
                    pass
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        finally:
            await channel.close()
        spans = await _finished_spans(exporter, lambda spans: len(spans) >= 2)
        for kind in (SpanKind.CLIENT, SpanKind.SERVER):
            (span,) = [s for s in spans if s.name == LLM_GENERATE and s.kind == kind]
            assert span.status.status_code == StatusCode.ERROR
            assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        # Health checks (kubelet probes) are not traced.
        assert not [s for s in spans if "Health" in s.name]
    finally:
        tracing.uninstall()
        for server, _ in reversed(servers):
            await server.stop(0)
        for app in reversed(apps):
            await app.close()
        provider.shutdown()
