"""`python -m shared.healthcheck`: the container healthcheck speaks gRPC health."""

from __future__ import annotations

import subprocess
import sys
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

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
