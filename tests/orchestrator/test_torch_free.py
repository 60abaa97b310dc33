"""The orchestrator process never loads torch: neither when its modules are imported nor when it serves
with the torch thread count the launcher gives every process. Each check runs in a fresh interpreter,
because this test process has torch loaded by other tests."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_importing_the_orchestrator_loads_no_torch():
    run_python("""
        import sys
        import services.orchestrator.server, services.orchestrator.__main__
        loaded = sorted(m for m in ("torch", "numpy") if m in sys.modules)
        assert not loaded, f"the orchestrator imports {loaded}"
    """)


def test_serving_with_torch_threads_loads_no_torch():
    # A stand-in app with the orchestrator's metrics: `serve` runs its real start and drain around it.
    run_python("""
        import asyncio, os, signal, sys
        import services.orchestrator.__main__
        from services.orchestrator import metrics
        from shared.grpc_server import serve
        from shared.settings import ServiceSettings

        class App:
            name = "orchestrator"
            metrics = metrics.RPC
            def register(self, server):
                return []
            async def load(self):
                os.kill(os.getpid(), signal.SIGTERM)  # stop as soon as it is up
            async def close(self):
                pass

        settings = ServiceSettings(torch_threads=1, host="127.0.0.1", port=0, metrics_port=-1, drain_seconds=0)
        asyncio.run(serve(App(), settings))
        assert "torch" not in sys.modules, "serving imported torch"
    """)
