"""`vita gpu-check`: without CUDA it stops at once with one line saying why; its measuring and reporting
run here on the tiny preset, against the test session's stack."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from apps.cli import build_parser


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda_available(), reason="this machine has CUDA: the check would start the full preset")
def test_without_cuda_it_fails_clearly_and_at_once():
    result = subprocess.run([sys.executable, "-m", "apps.cli", "gpu-check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "vita gpu-check needs a CUDA GPU" in result.stderr and "--device cpu --preset tiny" in result.stderr
    assert "Traceback" not in result.stderr
    assert "starting the" not in result.stdout  # nothing was started


def test_reports_ttft_ttfa_rtf_and_tokens_per_second_at_each_level(stack, tmp_path, capsys):
    from apps.bench.gpu_check import run

    out = tmp_path / "gpu-check.json"
    args = build_parser().parse_args([
        "gpu-check", "--address", stack.address, "--preset", "tiny", "--concurrency", "1,2",
        "--turns", "1", "--warmup", "0", "--reply-tokens", "6", "--json", str(out),
    ])
    assert run(args) == 0
    printed = capsys.readouterr().out
    assert "TTFT p50" in printed and "TTFA p50" in printed and "RTF p50" in printed and "tok/s total" in printed
    report = json.loads(out.read_text())
    assert [level["concurrency"] for level in report["levels"]] == [1, 2] and report["skipped"] == []
    for level in report["levels"]:
        assert level["turns"] == level["concurrency"] and level["failed_turns"] == 0
        for key in ("ttft_p50_ms", "ttfa_p50_ms", "rtf_p50", "llm_tokens_per_s_per_reply_p50", "llm_tokens_per_s_total"):
            assert level[key] is not None and level[key] > 0, key
        assert level["ttft_p50_ms"] <= level["ttfa_p50_ms"]  # text comes before its speech


def test_levels_that_do_not_fit_the_budget_fail_the_check(stack, capsys):
    from apps.bench.gpu_check import run

    args = build_parser().parse_args(["gpu-check", "--address", stack.address, "--concurrency", "1", "--budget-s", "0"])
    assert run(args) == 1
    assert "levels 1 did not fit in the budget" in capsys.readouterr().err
