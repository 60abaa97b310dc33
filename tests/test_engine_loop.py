"""The engine-loop base, with a toy engine: no torch, no model."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import Future

import pytest

from shared.engine_loop import EngineLoop, EngineStoppedError

WAIT_S = 5.0


class ToyStopped(EngineStoppedError):
    pass


class CountingEngine(EngineLoop):
    """Each job needs `steps` steps; a step advances every job by one. Commands and steps are logged."""

    stopped_error = ToyStopped

    def __init__(self, *, fail_on_step: int | None = None, idle_wait_s: float | None = None):
        super().__init__(name="toy", idle_wait_s=idle_wait_s)
        self.jobs: dict[str, list] = {}  # name -> [steps left, future]
        self.log: list[str] = []
        self.fail_on_step = fail_on_step
        self.step_count = 0
        self.step_gate = threading.Event()
        self.step_gate.set()
        self.in_step = threading.Event()
        self.thread_names: set[str] = set()
        self.stopped_with: list[str] = []

    # caller side
    def submit(self, name: str, steps: int) -> Future:
        future: Future = Future()
        self.post(lambda: self._on_submit(name, steps, future))
        return future

    def cancel(self, name: str) -> None:
        self.post_if_running(lambda: self._on_cancel(name))

    # engine thread
    def _on_submit(self, name: str, steps: int, future: Future) -> None:
        self.log.append(f"submit {name}")
        self.jobs[name] = [steps, future]

    def _on_cancel(self, name: str) -> None:
        self.log.append(f"cancel {name}")
        job = self.jobs.pop(name, None)
        if job is not None:
            job[1].set_result("cancelled")

    def has_work(self) -> bool:
        return bool(self.jobs)

    def step(self) -> None:
        self.thread_names.add(threading.current_thread().name)
        self.in_step.set()
        self.step_gate.wait(WAIT_S)
        self.step_count += 1
        self.log.append(f"step {sorted(self.jobs)}")
        if self.fail_on_step == self.step_count:
            raise RuntimeError("boom")
        for name, job in list(self.jobs.items()):
            job[0] -= 1
            if job[0] == 0:
                del self.jobs[name]
                job[1].set_result("done")

    def on_step_error(self, error: Exception) -> None:
        for job in self.jobs.values():
            job[1].set_exception(error)
        self.jobs.clear()

    def on_stop(self) -> None:
        self.stopped_with = sorted(self.jobs)
        for job in self.jobs.values():
            job[1].set_exception(ToyStopped("stopped"))
        self.jobs.clear()


@pytest.fixture
def engine():
    engine = CountingEngine()
    engine.start()
    yield engine
    engine.stop(timeout_s=WAIT_S)


def test_jobs_run_on_the_engine_thread_and_finish(engine):
    futures = [engine.submit("a", 2), engine.submit("b", 3)]
    assert [f.result(WAIT_S) for f in futures] == ["done", "done"]
    assert engine.thread_names == {"toy-engine"}
    stats = engine.loop_stats()
    assert stats.running and stats.commands_applied == 2 and stats.steps >= 3 and stats.busy_s > 0


def test_commands_posted_during_a_step_apply_before_the_next_step(engine):
    engine.step_gate.clear()
    slow = engine.submit("slow", 10**9)
    assert engine.in_step.wait(WAIT_S)
    # Queued while the step is blocked: both must land at the same boundary, in order.
    other = engine.submit("other", 10**9)
    engine.cancel("slow")
    assert engine.loop_stats().inbox_depth == 2
    engine.step_gate.set()
    assert slow.result(WAIT_S) == "cancelled"
    engine.cancel("other")
    assert other.result(WAIT_S) == "cancelled"
    first_step = engine.log.index("step ['slow']")
    assert engine.log[first_step + 1 : first_step + 4] == ["submit other", "cancel slow", "step ['other']"]


def test_idle_engine_sleeps():
    engine = CountingEngine()
    engine.start()
    try:
        engine.submit("a", 1).result(WAIT_S)
        steps = engine.loop_stats().steps
        time.sleep(0.2)
        assert engine.loop_stats().steps == steps
    finally:
        engine.stop(WAIT_S)


def test_a_failing_step_fails_its_requests_and_the_thread_survives():
    engine = CountingEngine(fail_on_step=1)
    engine.start()
    try:
        doomed = engine.submit("a", 5)
        with pytest.raises(RuntimeError, match="boom"):
            doomed.result(WAIT_S)
        assert engine.submit("b", 1).result(WAIT_S) == "done"
        assert engine.loop_stats().step_errors == 1
    finally:
        engine.stop(WAIT_S)


def test_a_failing_command_does_not_drop_the_next_ones(engine):
    def broken() -> None:
        raise ValueError("bad command")

    engine.step_gate.clear()
    engine.submit("a", 1000)
    assert engine.in_step.wait(WAIT_S)
    engine.post(broken)
    after = engine.submit("b", 1)
    engine.cancel("a")
    engine.step_gate.set()
    assert after.result(WAIT_S) == "done"
    assert engine.loop_stats().step_errors == 1


def test_stop_rejects_new_commands_and_hands_held_work_to_on_stop():
    engine = CountingEngine()
    engine.start()
    engine.step_gate.clear()
    running = engine.submit("running", 1000)
    assert engine.in_step.wait(WAIT_S)
    queued = engine.submit("queued", 1)  # accepted before stop: on_stop must see it

    stopper = threading.Thread(target=engine.stop, args=(WAIT_S,))
    stopper.start()
    deadline = time.monotonic() + WAIT_S
    while engine.running and time.monotonic() < deadline:
        time.sleep(0.001)
    with pytest.raises(ToyStopped, match="the toy engine is not running"):
        engine.submit("late", 1)
    engine.cancel("running")  # harmless after stop
    engine.step_gate.set()
    stopper.join(WAIT_S)

    assert not stopper.is_alive() and not engine.running
    assert engine.stopped_with == ["queued", "running"]
    for future in (running, queued):
        with pytest.raises(ToyStopped):
            future.result(WAIT_S)
    with pytest.raises(RuntimeError, match="cannot be restarted"):
        engine.start()


def test_post_before_start_is_refused_and_stop_before_start_is_harmless():
    engine = CountingEngine()
    with pytest.raises(EngineStoppedError):
        engine.submit("a", 1)
    engine.stop()
    assert not engine.running


def test_stop_from_the_engine_thread_does_not_deadlock():
    engine = CountingEngine()
    engine.start()
    done = threading.Event()

    def stop_from_inside() -> None:
        engine.stop()
        done.set()

    engine.post(stop_from_inside)
    assert done.wait(WAIT_S)
    deadline = time.monotonic() + WAIT_S
    while engine._loop_thread.is_alive() and time.monotonic() < deadline:  # noqa: SLF001 - the thread must end
        time.sleep(0.001)
    assert not engine._loop_thread.is_alive()  # noqa: SLF001


def test_idle_wait_rechecks_has_work_without_a_post():
    engine = CountingEngine(idle_wait_s=0.01)
    engine.start()
    try:
        future: Future = Future()
        # State changed behind the loop's back (as time-based work would): only the idle re-check sees it.
        engine.jobs["timer"] = [1, future]
        assert future.result(WAIT_S) == "done"
    finally:
        engine.stop(WAIT_S)


def test_the_loop_base_imports_no_torch():
    code = "import sys, shared.engine_loop; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=_repo_root())


def _repo_root() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[1])
