"""The benchmark's outputs: a table on stdout and a JSON document.

JSON layout (every latency in ms; every percentile object is {p50, p90, p99, mean, min, max, n}, or null
when the metric did not occur, e.g. `eos_to_audio_ms` without spoken turns):

    mode            "distributed" | "inprocess"
    preset          "tiny" | "full"
    concurrency     sessions of the first run; `concurrencies` lists every run's
    turns           measured turns that completed in the first run (warmup excluded)
    ttft_ms, ttfa_ms, eos_to_audio_ms, rtf, underruns, underrun_stall_ms, llm_tokens_per_s, reply_tokens,
    audio_s_per_turn, stages{name: {queue_ms, compute_ms}}, throughput{...}, failed_turns, errors, ...
                    the first run's metrics (see apps/bench/stats.py run_metrics)
    runs            one object of the same shape per concurrency, in the order given
    capacity        with --capacity only: {sessions, criterion, ttfa_p90_bound_ms, first_failing,
                    ramp_exhausted, tried[{concurrency, passed, why_not, underruns, ttfa_p50_ms, ...}]}
                    (apps/bench/capacity.py)
    settings        turns per session, warmup, reply tokens, seed, workload
    machine, date   where and when (CPU model, cores, load average before/after, torch, GPU)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    """Where the numbers come from. torch is not imported for this (the distributed client needs none)."""
    from importlib import metadata

    info = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": metadata.version("torch"),
        "gpus": _gpus(),
    }
    try:
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        info["git"] = commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _gpus() -> list[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def run_result(concurrency: int, metrics: dict, load_before: list[float]) -> dict:
    return {"concurrency": concurrency, **metrics, "load_average_before": load_before,
            "load_average_after": list(os.getloadavg())}


def document(mode: str, preset: str, runs: list[dict], settings: dict, machine: dict) -> dict:
    first = runs[0]
    return {
        "mode": mode,
        "preset": preset,
        **first,
        "concurrencies": [run["concurrency"] for run in runs],
        "runs": runs,
        "settings": settings,
        "machine": machine,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


# ----- table -----

_ROWS = (
    ("ttft_ms", "time to first text (ms)"),
    ("ttfa_ms", "time to first audio (ms)"),
    ("first_segment_ms", "  input → 1st speech segment"),
    ("segment_to_audio_ms", "  1st segment → audio (ms)"),
    ("eos_to_audio_ms", "end of speech → audio (ms)"),
    ("server_ttft_ms", "  orchestrator-side ttft (ms)"),
    ("server_ttfa_ms", "  orchestrator-side ttfa (ms)"),
    ("rtf", "speech real-time factor"),
    ("underruns", "playback underruns / turn"),
    ("underrun_stall_ms", "stalled ms / turn"),
    ("llm_tokens_per_s", "LLM decode tok/s / turn"),
    ("reply_tokens", "reply tokens / turn"),
    ("prefilled_tokens", "prompt tokens prefilled / turn"),
    ("cached_tokens", "prompt tokens from KV cache"),
    ("audio_s_per_turn", "reply audio s / turn"),
)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def format_run(mode: str, preset: str, run: dict) -> str:
    lines = [
        f"{mode}, preset {preset}, concurrency {run['concurrency']}: {run['turns']} measured turns"
        + (f", {run['failed_turns']} FAILED" if run["failed_turns"] else "")
        + (f", {run['unsupported_turns']} unsupported (skipped)" if run["unsupported_turns"] else ""),
        f"  {'metric':<30}{'p50':>10}{'p90':>10}{'p99':>10}{'mean':>10}{'n':>6}",
    ]
    for key, label in _ROWS:
        stats = run.get(key)
        if stats is None:
            lines.append(f"  {label:<30}{'n/a':>10}")
            continue
        lines.append(f"  {label:<30}" + "".join(f"{_num(stats[q]):>10}" for q in ("p50", "p90", "p99", "mean"))
                     + f"{stats['n']:>6}")
    if run["stages"]:
        lines.append(f"  {'stage (per turn, ms)':<30}{'compute p50':>12}{'p90':>10}{'queue p50':>12}{'p90':>10}")
        for name, stage in run["stages"].items():
            compute, queue = stage["compute_ms"] or {}, stage["queue_ms"] or {}
            lines.append(f"    {name:<28}{_num(compute.get('p50')):>12}{_num(compute.get('p90')):>10}"
                         f"{_num(queue.get('p50')):>12}{_num(queue.get('p90')):>10}")
    t = run["throughput"]
    lines.append(
        f"  throughput: {_num(t['turns_per_s'])} turns/s, {_num(t['audio_s_per_s'])} s of audio per s, "
        f"LLM {_num(t['llm_tokens_per_s'])} tok/s ({_num(t['llm_tokens_per_busy_s'])} tok/s while any reply "
        f"streams text), window {_num(t['wall_s'])} s; underruns {run['underruns_total']} in "
        f"{run['turns_with_underruns']} turns"
    )
    for error in run["errors"]:
        lines.append(f"  error: {error}")
    return "\n".join(lines)


def format_summary(runs: list[dict]) -> str:
    """One line per concurrency (when several were run)."""
    header = (f"{'conc':>5}{'ttft p50':>10}{'ttfa p50':>10}{'ttfa p90':>10}{'ttfa p99':>10}{'rtf p50':>9}"
              f"{'underr':>8}{'turns/s':>9}{'audio s/s':>10}{'LLM tok/s':>11}")
    lines = [header]
    for run in runs:
        ttft, ttfa, rtf = run["ttft_ms"] or {}, run["ttfa_ms"] or {}, run["rtf"] or {}
        t = run["throughput"]
        lines.append(
            f"{run['concurrency']:>5}{_num(ttft.get('p50')):>10}{_num(ttfa.get('p50')):>10}{_num(ttfa.get('p90')):>10}"
            f"{_num(ttfa.get('p99')):>10}{_num(rtf.get('p50')):>9}{run['underruns_total']:>8}"
            f"{_num(t['turns_per_s']):>9}{_num(t['audio_s_per_s']):>10}{_num(t['llm_tokens_per_s']):>11}"
        )
    return "\n".join(lines)
