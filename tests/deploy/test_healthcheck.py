"""gRPC health on every service: `python -m shared.healthcheck` (the container healthcheck), and Watch."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from shared import healthcheck


def test_exit_code_follows_the_serving_status():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    address = f"127.0.0.1:{port}"
    try:
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert healthcheck.main([address]) == 1  # loading: not healthy yet
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert healthcheck.main([address]) == 0
        assert healthcheck.check(address, service="vita.llm.v1.LLM") == "NOT_FOUND"
        # As the image runs it: a fresh interpreter, the address from VITA_PORT.
        result = subprocess.run(
            [sys.executable, "-m", "shared.healthcheck"], env={"VITA_PORT": str(port), "PATH": ""},
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0 and "SERVING" in result.stdout, result.stderr
    finally:
        server.stop(0)
    assert healthcheck.main([address, "--timeout", "0.5"]) == 1  # nobody listening


async def _watch_first_status(address: str, service: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service))
        try:
            reply = await asyncio.wait_for(call.read(), 30)
        finally:
            call.cancel()
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def test_health_watch_streams_the_status_of_every_service(stack):
    """Client-side health checking (a gRPC client's healthCheckConfig, Envoy) relies on Watch. It goes
    through the same interceptors as the services' own RPCs, and is not counted with them."""
    targets = {"llm": (stack.services["llm"], "vita.llm.v1.LLM"),
               "orchestrator": (stack.orchestrator, "vita.assistant.v1.Assistant")}
    for name, (process, service) in targets.items():
        assert await _watch_first_status(process.address, "") == "SERVING", name
        assert await _watch_first_status(process.address, service) == "SERVING", name
        assert await _watch_first_status(process.address, "no.such.Service") == "SERVICE_UNKNOWN", name
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{process.metrics_port}/metrics", timeout=10).read().decode()
        families = {family.name: family for family in text_string_to_metric_families(metrics)}
        rpcs = families[f"vita_{name}_rpcs"]
        assert not [s for s in rpcs.samples if s.labels.get("method") in ("Watch", "Check")], name
