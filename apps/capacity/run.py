"""One measured point: load processes open their sessions, a window of `duration_s` is measured after
`warmup_s` (every session has had its first turns), and counters read at both ends of the window become
per-turn figures."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import redis

from apps.capacity.load import Plan
from apps.capacity.probes import Snapshot, raise_priority
from apps.capacity.report import percentiles
from apps.capacity.stack import CapacityStack
from apps.fakes.config import FakeSettings
from apps.fakes.reply import FIRST_SEGMENT_TOKENS

# Sessions one load process drives: past this its event loop, not the orchestrator, would set the pace.
SESSIONS_PER_CLIENT = 500
OPEN_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Workload:
    max_reply_tokens: int = 64
    user_speaks_s: float = 3.0
    sessions_per_channel: int = 50
    warmup_s: float = 10.0
    duration_s: float = 30.0
    seed: int = 0


def client_count(sessions: int, requested: int = 0) -> int:
    return requested if requested > 0 else max(1, math.ceil(sessions / SESSIONS_PER_CLIENT))


def _plan(address: str, sessions: int, seed: int, workload: Workload, fakes: FakeSettings) -> Plan:
    return Plan(
        address=address, sessions=sessions, seed=seed, sessions_per_channel=workload.sessions_per_channel,
        max_reply_tokens=workload.max_reply_tokens, user_speaks_s=workload.user_speaks_s,
        llm_first_token_ms=fakes.llm_first_token_ms, llm_prefill_ms_per_token=fakes.llm_prefill_ms_per_token,
        llm_decode_tokens_per_s=fakes.llm_decode_tokens_per_s, speech_first_chunk_ms=fakes.speech_first_chunk_ms,
        first_segment_tokens=FIRST_SEGMENT_TOKENS,
    )


def _expect(process: subprocess.Popen, prefix: str, deadline: float) -> str:
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"a load process exited (code {process.wait()}) before printing {prefix.strip()}")
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    raise RuntimeError(f"a load process did not print {prefix.strip()} in time")


def measure_point(stack: CapacityStack, sessions: int, workload: Workload, fakes: FakeSettings,
                  clients: int = 0, priority: int | None = None) -> dict:
    """`priority`: a nice value (e.g. -10) given to every measured process, Redis included, so that on a
    machine shared with other work the measured stack is not starved (see raise_priority)."""
    clients = client_count(sessions, clients)
    shares = [sessions // clients + (1 if i < sessions % clients else 0) for i in range(clients)]
    processes = []
    store = redis.Redis.from_url(stack.redis_url)
    try:
        for index, share in enumerate(shares):
            process = subprocess.Popen([sys.executable, "-m", "apps.capacity.load"], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True, start_new_session=True)
            plan = _plan(stack.address, share, workload.seed * 1000 + index + sessions, workload, fakes)
            process.stdin.write(json.dumps(asdict(plan)) + "\n")
            process.stdin.flush()
            processes.append(process)
        deadline = time.monotonic() + OPEN_TIMEOUT_S
        for process in processes:
            _expect(process, "READY", deadline)
        start = time.time() + workload.warmup_s
        end = start + workload.duration_s
        for process in processes:
            process.stdin.write(f"GO {start} {end}\n")
            process.stdin.flush()
        pids = {"orchestrator": stack.orchestrator.process.pid,
                **{f"fake-{name}": fake.process.pid for name, fake in stack.fakes.items()},
                **{f"client-{i}": p.pid for i, p in enumerate(processes)}}
        if priority is not None:
            redis_pid = store.info("server")["process_id"]
            boosted = [raise_priority(pid, priority) for pid in (*pids.values(), redis_pid)]
            if not all(boosted):
                raise RuntimeError("--priority needs root (setpriority and /proc/<pid>/autogroup)")
        time.sleep(max(0.0, start - time.time()))
        load_before = os.getloadavg()
        before = Snapshot.take(pids, store)
        time.sleep(max(0.0, end - time.time()))
        after = Snapshot.take(pids, store)
        load_after = os.getloadavg()
        results = [json.loads(_expect(p, "RESULT ", time.monotonic() + 120.0)) for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        store.close()
    point = summarise(sessions, clients, workload, results, before, after, (load_before, load_after))
    point["priority"] = priority
    return point


def _merged(results: list[dict], key: str) -> list:
    return [value for result in results for value in result[key]]


def summarise(sessions: int, clients: int, workload: Workload, results: list[dict], before: Snapshot,
              after: Snapshot, loads) -> dict:
    window_s = workload.duration_s
    turns = sum(r["turns"] for r in results)
    completed = sum(r["completed_in_window"] for r in results)
    per_turn = max(1, completed)
    cpu = {name: after.processes[name] - before.processes[name] for name in after.processes}
    orchestrator_cores = cpu["orchestrator"] / window_s
    redis_delta = after.redis.minus(before.redis)
    harness_ops = redis_delta.by_command.get("info", 0)
    busy = (after.machine[0] - before.machine[0]) / max(1e-9, after.machine[1] - before.machine[1])
    return {
        "sessions": sessions,
        "clients": clients,
        "window_s": window_s,
        "turns": turns,
        "failed_turns": sum(r["failed"] for r in results),
        "open_failures": sum(r["open_failures"] for r in results),
        "errors": _merged(results, "errors")[:10],
        "turns_per_s": completed / window_s,
        "ttft_ms": percentiles(_merged(results, "ttft_ms")),
        "ttfa_ms": percentiles(_merged(results, "ttfa_ms")),
        "added_ttft_ms": percentiles(_merged(results, "added_ttft_ms")),
        "added_ttfa_ms": percentiles(_merged(results, "added_ttfa_ms")),
        "reply_audio_s": percentiles(_merged(results, "audio_s")),
        "prefilled_tokens": percentiles(_merged(results, "prefilled_tokens")),
        "orchestrator_cpu_ms_per_turn": cpu["orchestrator"] * 1000 / per_turn,
        "orchestrator_cores": orchestrator_cores,
        "sessions_per_orchestrator_core": sessions / orchestrator_cores if orchestrator_cores > 0 else None,
        "redis_ops_per_turn": (redis_delta.commands - harness_ops) / per_turn,
        "redis_in_bytes_per_turn": redis_delta.input_bytes / per_turn,
        "redis_out_bytes_per_turn": redis_delta.output_bytes / per_turn,
        "redis_cpu_ms_per_turn": redis_delta.cpu_s * 1000 / per_turn,
        "redis_commands_per_turn": {name: round(count / per_turn, 2) for name, count in
                                    sorted(redis_delta.by_command.items()) if name != "info"},
        "fakes_cores": {name: value / window_s for name, value in cpu.items() if name.startswith("fake-")},
        "clients_cores": sum(value for name, value in cpu.items() if name.startswith("client-")) / window_s,
        "client_loop_lag_ms": percentiles(_merged(results, "loop_lag_ms")),
        "machine_busy_fraction": busy,
        "load_average_1m": [loads[0][0], loads[1][0]],
    }
