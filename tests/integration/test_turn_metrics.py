"""What the orchestrator reports about a turn: media encodes in its stage breakdown (metric and
TurnCompleted.timings), the `input` label of its latencies, and probes kept out of the RPC counters."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from services.orchestrator import metrics
from tests.client import Client, scrape
from tests.integration.test_media_turns import image_input
from tests.vision.media import encode_image
from vita.assistant.v1 import assistant_pb2


def count(samples: dict, name: str, **labels) -> float:
    """Sum of `name` over every label set that contains `labels`."""
    wanted = set(labels.items())
    return sum(value for (sample, sample_labels), value in samples.items() if sample == name and wanted <= set(sample_labels))


async def test_an_image_turn_reports_its_vision_stages_and_is_labelled_image(stack):
    before = scrape(stack.orchestrator.metrics_port)
    async with Client(stack.address) as client:
        session_id = await client.create_session(seed=3, max_reply_tokens=8)
        async with client.converse(session_id) as conv:
            # A colour no other test sends: the orchestrator's embedding cache must not spare the encode.
            unique = encode_image(Image.new("RGB", (320, 240), (201, 17, 99)), "PNG")
            turn = await conv.turn("Describe it.", media=[image_input(unique)])
    assert turn.completed is not None and turn.completed.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED
    stages = {stage.stage for stage in turn.completed.timings.stages}
    assert "vision.encode" in stages, stages
    assert any(stage.startswith("llm.") for stage in stages), stages
    encode = next(s for s in turn.completed.timings.stages if s.stage == "vision.encode")
    assert encode.compute_ms > 0

    after = scrape(stack.orchestrator.metrics_port)
    grew = lambda name, **labels: count(after, name, **labels) > count(before, name, **labels)  # noqa: E731
    assert grew("vita_orchestrator_stage_seconds_count", stage="vision.encode", kind="compute")
    assert grew("vita_orchestrator_ttft_seconds_count", input="image")
    assert count(after, "vita_orchestrator_ttft_seconds_count", input="text") == count(
        before, "vita_orchestrator_ttft_seconds_count", input="text"
    )


def test_latency_buckets_reach_past_thirty_seconds():
    # A slow turn must land in a bucket of its own, not in +Inf with everything past 30 s.
    for histogram in (metrics.TTFT_SECONDS, metrics.TTFA_SECONDS, metrics.TURN_SECONDS, metrics.STAGE_SECONDS):
        finite = [bound for bound in histogram._upper_bounds if bound != float("inf")]  # noqa: SLF001
        assert max(finite) >= 120.0, histogram._name  # noqa: SLF001


async def test_health_and_reflection_calls_are_not_counted_as_rpcs(stack):
    targets = {"llm": stack.services["llm"], "orchestrator": stack.orchestrator}
    before = {name: scrape(service.metrics_port) for name, service in targets.items()}
    for name, service in targets.items():
        async with grpc.aio.insecure_channel(service.address) as channel:
            for _ in range(3):
                reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()
            await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            listed = await call.read()
            assert any(s.name == "grpc.health.v1.Health" for s in listed.list_services_response.service)
            await call.done_writing()
            assert await call.read() is grpc.aio.EOF
    for name, service in targets.items():
        after = scrape(service.metrics_port)
        series = f"vita_{name}_rpcs_total"
        methods = {dict(labels).get("method", "") for (sample, labels), _ in after.items() if sample == series}
        assert not any("Health" in m or "Reflection" in m for m in methods), methods
        assert count(after, series) == count(before[name], series)
