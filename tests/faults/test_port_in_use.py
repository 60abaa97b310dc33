"""A port in use fails the start with a message naming it. gRPC turns SO_REUSEPORT on by default, with
which a second server would bind the same port silently and the kernel would split calls between two
stacks."""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import pytest

from shared.grpc_server import PortInUse, bind, server_options
from shared.keepalive import DEFAULT
from shared.settings import ServiceSettings


async def test_a_second_server_on_a_busy_port_is_refused():
    first = grpc.aio.server(options=server_options(1 << 20, DEFAULT))
    port = bind(first, "127.0.0.1:0", ServiceSettings())
    second = grpc.aio.server(options=server_options(1 << 20, DEFAULT))
    try:
        with pytest.raises(PortInUse, match=f"127.0.0.1:{port}"):
            bind(second, f"127.0.0.1:{port}", ServiceSettings())
    finally:
        await second.stop(0)
        await first.stop(0)


async def test_a_service_started_on_a_busy_port_exits_with_a_clear_message():
    # What already listens there: a gRPC server with gRPC's defaults (SO_REUSEPORT on), as an older stack.
    squatter = grpc.aio.server()
    port = squatter.add_insecure_port("127.0.0.1:0")
    await squatter.start()
    try:
        env = {**os.environ, "VITA_PORT": str(port), "VITA_METRICS_PORT": "-1", "VITA_HOST": "127.0.0.1"}
        result = subprocess.run([sys.executable, "-m", "services.orchestrator"], env=env,
                                capture_output=True, text=True, timeout=60)
    finally:
        await squatter.stop(0)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in result.stderr
    assert "Traceback" not in result.stderr
