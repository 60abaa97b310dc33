"""Percentiles, the one-line summary of a point, and the plot of the measured curve."""

from __future__ import annotations

from pathlib import Path


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(float(ordered[min(len(ordered) - 1, int(q * len(ordered)))]), 2)

    return {"n": len(ordered), "p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": round(float(ordered[-1]), 2)}


def format_point(point: dict) -> str:
    per_core = point["sessions_per_orchestrator_core"]
    return (
        f"{point['sessions']:>5} sessions: {point['turns_per_s']:6.1f} turns/s, "
        f"added p50/p99 TTFT {point['added_ttft_ms']['p50']}/{point['added_ttft_ms']['p99']} ms, "
        f"TTFA {point['added_ttfa_ms']['p50']}/{point['added_ttfa_ms']['p99']} ms; "
        f"orchestrator {point['orchestrator_cores']:.2f} cores, {point['orchestrator_cpu_ms_per_turn']:.1f} ms CPU/turn"
        f" ({per_core:.0f} sessions/core); Redis {point['redis_ops_per_turn']:.1f} ops, "
        f"{point['redis_in_bytes_per_turn'] / 1024:.1f} KiB in/turn; clients {point['clients_cores']:.2f} cores, "
        f"loop lag p99 {point['client_loop_lag_ms']['p99']} ms; machine {point['machine_busy_fraction']:.0%} busy, "
        f"load {point['load_average_1m'][1]:.1f}; failed {point['failed_turns']}"
        if per_core else f"{point['sessions']:>5} sessions: no orchestrator CPU measured"
    )


def plot_capacity(points: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sessions = [p["sessions"] for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label in (("added_ttft_ms", "TTFT"), ("added_ttfa_ms", "TTFA")):
        left.plot(sessions, [p[key]["p50"] for p in points], "o-", label=f"{label} p50")
        left.plot(sessions, [p[key]["p99"] for p in points], "s--", label=f"{label} p99")
    left.axhline(20, color="grey", linestyle=":", label="20 ms goal (p99)")
    left.set_xscale("log")
    left.set_xlabel("concurrent sessions")
    left.set_ylabel("latency added by the orchestrator (ms)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.plot(sessions, [p["orchestrator_cores"] for p in points], "o-", label="orchestrator CPU (cores)")
    right.set_xscale("log")
    right.set_xlabel("concurrent sessions")
    right.set_ylabel("orchestrator CPU (cores)")
    twin = right.twinx()
    twin.plot(sessions, [p["turns_per_s"] for p in points], "s--", color="tab:orange", label="turns/s")
    twin.set_ylabel("turns/s")
    right.legend(loc="upper left", fontsize=8)
    twin.legend(loc="lower right", fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
