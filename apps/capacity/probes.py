"""Counters read before and after a measured window: CPU seconds of a process (/proc), Redis's command
and byte counters (INFO), and how busy the whole machine was (/proc/stat)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import redis

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (gRPC's own included)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the machine since boot, all cores."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


@dataclass(frozen=True)
class RedisCounters:
    commands: int
    input_bytes: int
    output_bytes: int
    cpu_s: float
    by_command: dict[str, int]

    @classmethod
    def read(cls, client: redis.Redis) -> "RedisCounters":
        stats, cpu = client.info("stats"), client.info("cpu")
        by_command = {name.removeprefix("cmdstat_"): value["calls"]
                      for name, value in client.info("commandstats").items()}
        return cls(stats["total_commands_processed"], stats["total_net_input_bytes"],
                   stats["total_net_output_bytes"], cpu["used_cpu_sys"] + cpu["used_cpu_user"], by_command)

    def minus(self, before: "RedisCounters") -> "RedisCounters":
        names = set(self.by_command) | set(before.by_command)
        by_command = {n: self.by_command.get(n, 0) - before.by_command.get(n, 0) for n in names}
        return RedisCounters(self.commands - before.commands, self.input_bytes - before.input_bytes,
                             self.output_bytes - before.output_bytes, self.cpu_s - before.cpu_s,
                             {n: v for n, v in by_command.items() if v})


@dataclass
class Snapshot:
    """Everything read at one instant of the run."""

    processes: dict[str, float]  # name → CPU seconds
    machine: tuple[float, float]
    redis: RedisCounters

    @classmethod
    def take(cls, pids: dict[str, int], client: redis.Redis) -> "Snapshot":
        return cls({name: process_cpu_s(pid) for name, pid in pids.items()}, machine_busy_s(), RedisCounters.read(client))


def raise_priority(pid: int, nice: int) -> bool:
    """Gives a process a scheduling priority above the rest of a shared machine: its own nice, and its
    session's autogroup nice (Linux groups processes by session, and each process here runs in its own,
    so a plain nice would not count against the other sessions). Needs root; False when refused."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
        with open(f"/proc/{pid}/autogroup", "w") as autogroup:
            autogroup.write(str(nice))
        return True
    except OSError:
        return False
