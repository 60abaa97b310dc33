"""First-audio latency against concurrency (`vita bench --concurrency 1,2,4,8 --plot out.png`)."""

from __future__ import annotations

from pathlib import Path


def plot_latency(runs: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file
    import matplotlib.pyplot as plt

    runs = [run for run in runs if run.get("ttfa_ms")]
    if not runs:
        raise ValueError("no run produced audio: nothing to plot")
    x = [run["concurrency"] for run in runs]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for quantile, style in (("p50", "o-"), ("p90", "s--"), ("p99", "^:")):
        ax.plot(x, [run["ttfa_ms"][quantile] for run in runs], style, label=f"first audio {quantile}")
    if all(run.get("ttft_ms") for run in runs):
        ax.plot(x, [run["ttft_ms"]["p50"] for run in runs], "x-", color="grey", label="first text p50")
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(c) for c in x])
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel("latency from end of user input (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
