"""The fault suite's stack and tools: real processes (tiny preset), killed, stopped and restarted on the
same ports. At the end of the run one line sums the faults injected and what they cost (tests.faults.ledger)."""

from __future__ import annotations

import pytest

from apps.launcher import Stack, StackConfig
from tests.conftest import _child_pids
from tests.faults.ledger import LEDGER
from tests.faults.processes import ADOPTED_PIDS


@pytest.fixture(scope="session")
def fault_stack(tmp_path_factory):
    """Every model service and an orchestrator, for the fault suite only: its cases kill and restart these
    processes, which the rest of the tests must not see."""
    with Stack(StackConfig(log_dir=tmp_path_factory.mktemp("fault-logs"))) as running:
        yield running


@pytest.fixture(autouse=True)
def no_leaks():
    """As the suite's own: no child process left behind, except the restarts a stack adopted."""
    before = _child_pids()
    yield
    leaked = _child_pids() - before - ADOPTED_PIDS
    assert not leaked, f"test left child processes running: {sorted(leaked)}"


@pytest.fixture(scope="session")
def ledger():
    return LEDGER


def pytest_terminal_summary(terminalreporter):
    if LEDGER.faults:
        terminalreporter.write_line(LEDGER.summary())
