"""The loop every model engine runs on: one worker thread, a command inbox, a step boundary, stop, stats.

An engine (LLM, speech, audio, vision) subclasses `EngineLoop`. Two kinds of code meet in it:

* caller threads (a servicer's event loop, a benchmark) call the engine's public methods. Those validate
  their input, then `post()` a command: a zero-argument callable that will run on the engine thread.
  They never touch engine-thread state and never run model code.
* the engine thread owns all engine state and all model compute. It runs this cycle:

      wait until the inbox has a command, or has_work() is true, or stop() was called
      apply every queued command, in the order posted        <- the step boundary
      if has_work(): step()                                  <- one unit of model work
      repeat

  So a command posted while a step runs takes effect before the next step: a cancel stops its request
  within one step, a submit joins the next step. Commands are applied one by one and never overlap a step.

The contract with a subclass (every hook runs on the engine thread; none of them may block on callers):

* `has_work() -> bool`: is there anything for `step()` to do? Checked while holding the inbox lock, so it
  must be cheap and must not wait on other threads.
* `step() -> None`: one unit of work (a prefill chunk and a decode step, a batch of tiles...).
* `on_step_error(error)`: `step()` raised. The loop has already logged it; the subclass fails the requests
  the step was working on (typically every request it holds), so callers get an error instead of waiting
  forever. The thread keeps running. A hook that raises in turn is logged and ignored.
* `on_command_error(error)`: a command raised (a bug: commands should only move state). Logged; the
  default does nothing more. The following commands still run.
* `on_stop()`: the loop ended. Every command accepted before `stop()` has been applied, so everything a
  caller was promised an answer for is in the subclass's state: fail it with the engine's stopped error,
  or finish it (call `self.step()` while `has_work()`), and release what it holds.
* `worker_context()`: a context manager entered on the engine thread around the whole loop
  (e.g. `torch.inference_mode()`, thread settings). This module itself imports no torch.

What the subclass calls:

* `post(command)`: enqueue; raises `stopped_error` once `stop()` has been called (or before `start()`).
* `post_if_running(command) -> bool`: enqueue unless stopped; for cancels and releases, which must stay
  harmless after stop (a servicer cancels in its `finally`).
* `inbox_lock`: a re-entrant lock, for caller-side bookkeeping that must be atomic with a post (e.g.
  refusing a duplicate request id); `post()` may be called while holding it.
* `loop_stats() -> LoopStats`: counters to merge into the engine's own stats (as a `loop` field).
* `start()`, `stop(timeout_s)`, `running`: lifecycle, usually inherited as the engine's public API.

`stop()` refuses new commands from the moment it is called, lets the step in flight finish, applies the
commands already queued, calls `on_stop()`, and joins the thread (unless called from the engine thread
itself, e.g. from an event callback). An engine cannot be restarted after `stop()`.

The base keeps its own state in attributes named `_loop_*` (and `engine_name`); subclasses leave that
prefix alone, so an engine's `_run` or `_thread` can never shadow the loop's.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

logger = logging.getLogger(__name__)

Command = Callable[[], None]


class EngineStoppedError(RuntimeError):
    """The engine is not running (never started, or stopped). Servicers map it to UNAVAILABLE."""


@dataclass(frozen=True)
class LoopStats:
    running: bool = False  # accepting commands
    steps: int = 0  # calls of step()
    commands_applied: int = 0
    step_errors: int = 0  # step() or a command raised
    busy_s: float = 0.0  # time spent applying commands and in step()
    inbox_depth: int = 0  # commands posted, not yet applied


class EngineLoop:
    """Base of the model engines; see the module docstring for the contract."""

    # Raised by post() when stopped; engines set their own subclass so servicers can catch it by name.
    stopped_error: type[Exception] = EngineStoppedError

    def __init__(self, *, name: str, idle_wait_s: float | None = None) -> None:
        """`name` names the thread ("<name>-engine") and goes into the stopped error's message.
        `idle_wait_s`: when set, an idle loop re-checks `has_work()` at least this often (for work that
        becomes due with time rather than with a post)."""
        self.engine_name = name
        self._loop_idle_wait_s = idle_wait_s
        # Shared with caller threads, guarded by _loop_lock (an RLock so subclasses can post while holding it).
        self._loop_lock = threading.Condition(threading.RLock())
        self._loop_inbox: deque[Command] = deque()
        self._loop_accepting = False
        self._loop_stopping = False
        self._loop_thread: threading.Thread | None = None
        self._loop_steps = 0
        self._loop_commands_applied = 0
        self._loop_step_errors = 0
        self._loop_busy_ns = 0

    # ----------------------------------------------------------------------------------- caller threads

    def start(self) -> None:
        """Start the engine thread; a no-op if it runs already."""
        with self._loop_lock:
            if self._loop_stopping:
                raise RuntimeError(f"the {self.engine_name} engine was stopped and cannot be restarted")
            if self._loop_thread is not None:
                return
            self._loop_accepting = True
            self._loop_thread = threading.Thread(
                target=self._loop_main, name=f"{self.engine_name}-engine", daemon=True
            )
            self._loop_thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Refuse new commands, finish the step in flight, hand everything held to `on_stop()`, join."""
        with self._loop_lock:
            self._loop_accepting = False
            self._loop_stopping = True
            self._loop_lock.notify_all()
            thread = self._loop_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    @property
    def running(self) -> bool:
        """True between start() and stop() (for health checks)."""
        with self._loop_lock:
            return self._loop_accepting

    @property
    def inbox_lock(self) -> AbstractContextManager:
        return self._loop_lock

    def post(self, command: Command) -> None:
        """Queue a command for the next step boundary; raises `stopped_error` when not running."""
        with self._loop_lock:
            if not self._loop_accepting:
                raise self.stopped_error(f"the {self.engine_name} engine is not running")
            self._loop_inbox.append(command)
            self._loop_lock.notify()

    def post_if_running(self, command: Command) -> bool:
        """Queue a command unless the engine is stopped; returns whether it was queued."""
        with self._loop_lock:
            if not self._loop_accepting:
                return False
            self._loop_inbox.append(command)
            self._loop_lock.notify()
            return True

    def loop_stats(self) -> LoopStats:
        with self._loop_lock:
            return LoopStats(
                running=self._loop_accepting,
                steps=self._loop_steps,
                commands_applied=self._loop_commands_applied,
                step_errors=self._loop_step_errors,
                busy_s=self._loop_busy_ns / 1e9,
                inbox_depth=len(self._loop_inbox),
            )

    # ------------------------------------------------------------------------------------ subclass hooks

    def has_work(self) -> bool:
        raise NotImplementedError

    def step(self) -> None:
        raise NotImplementedError

    def on_step_error(self, error: Exception) -> None:
        """Fail the requests the failed step was working on. The default only leaves the log line."""

    def on_command_error(self, error: Exception) -> None:
        """A command raised; the default leaves the log line."""

    def on_stop(self) -> None:
        """Fail or finish everything held; called once, on the engine thread, after the last command."""

    def worker_context(self) -> AbstractContextManager:
        return contextlib.nullcontext()

    # ------------------------------------------------------------------------------------- engine thread

    def _loop_main(self) -> None:
        with self.worker_context():
            while True:
                commands = self._loop_next_commands()
                if commands is None:
                    break
                started = time.perf_counter_ns()
                self._loop_apply(commands)
                stepped = self._loop_step_if_work()
                with self._loop_lock:
                    self._loop_busy_ns += time.perf_counter_ns() - started
                    self._loop_steps += stepped
            # Commands accepted before stop() are applied, so on_stop() sees every request it must answer.
            with self._loop_lock:
                remaining = list(self._loop_inbox)
                self._loop_inbox.clear()
            self._loop_apply(remaining)
            try:
                self.on_stop()
            except Exception:  # noqa: BLE001 - stop() must still return and join
                logger.exception("%s engine: on_stop failed", self.engine_name)

    def _loop_next_commands(self) -> list[Command] | None:
        """Sleep until there is something to do; take the inbox. None when the loop must end."""
        with self._loop_lock:
            while not self._loop_stopping and not self._loop_inbox and not self.has_work():
                self._loop_lock.wait(self._loop_idle_wait_s)
            if self._loop_stopping:
                return None
            commands = list(self._loop_inbox)
            self._loop_inbox.clear()
            return commands

    def _loop_apply(self, commands: list[Command]) -> None:
        errors = 0
        for command in commands:
            try:
                command()
            except Exception as error:  # noqa: BLE001 - one bad command must not drop the ones behind it
                errors += 1
                logger.exception("%s engine: a command failed", self.engine_name)
                self._loop_call_hook(self.on_command_error, error)
        with self._loop_lock:
            self._loop_commands_applied += len(commands)
            self._loop_step_errors += errors

    def _loop_step_if_work(self) -> int:
        if not self.has_work():
            return 0
        try:
            self.step()
        except Exception as error:  # noqa: BLE001 - a failed step fails its requests, not the engine
            logger.exception("%s engine: a step failed", self.engine_name)
            with self._loop_lock:
                self._loop_step_errors += 1
            self._loop_call_hook(self.on_step_error, error)
        return 1

    def _loop_call_hook(self, hook: Callable[[Exception], None], error: Exception) -> None:
        try:
            hook(error)
        except Exception:  # noqa: BLE001 - the error hook is the last resort; the thread must survive
            logger.exception("%s engine: %s failed", self.engine_name, hook.__name__)
