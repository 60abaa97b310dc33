"""`vita bench` on a very small workload: the JSON has every field and sane values (not speed)."""

from __future__ import annotations

import json

import pytest
import torch

from apps.bench.command import build_document, collect
from apps.bench.plot import plot_latency
from apps.bench.report import machine_info, write_json
from apps.bench.stats import TurnSample, busy_seconds, percentile, summarize
from apps.bench.workload import IMAGE, SPOKEN, TEXT, build_workload
from apps.cli import build_parser

PERCENTILE_METRICS = ("ttft_ms", "ttfa_ms", "rtf", "underruns", "llm_tokens_per_s")


def bench_args(*extra: str):
    return build_parser().parse_args(
        ["bench", "--turns", "2", "--warmup", "1", "--reply-tokens", "16", "--seed", "3", *extra]
    )


def check_document(doc: dict, *, mode: str, concurrency: int, turns: int) -> None:
    assert doc["mode"] == mode and doc["preset"] == "tiny"
    assert doc["concurrency"] == concurrency and doc["concurrencies"] == [concurrency]
    assert doc["turns"] == turns, "measured turns, warmup excluded"
    assert doc["failed_turns"] == 0 and doc["errors"] == []
    for name in PERCENTILE_METRICS:
        stats = doc[name]
        assert stats is not None, name
        assert stats["n"] > 0
        assert stats["p50"] <= stats["p90"] <= stats["p99"], name
    assert doc["eos_to_audio_ms"] is None  # text turns only
    assert 0 < doc["ttft_ms"]["p50"] <= doc["ttfa_ms"]["p50"]
    assert doc["ttft_ms"]["min"] > 0 and doc["ttfa_ms"]["min"] >= doc["ttft_ms"]["min"]
    assert doc["rtf"]["min"] > 0
    assert doc["underruns"]["min"] >= 0
    assert doc["llm_tokens_per_s"]["min"] > 0
    # Random weights rarely stop early: replies run to --reply-tokens.
    assert doc["reply_tokens"]["max"] <= 16
    assert {"llm.decode", "speech.ar", "speech.codec"} <= set(doc["stages"])
    throughput = doc["throughput"]
    assert throughput["wall_s"] > 0 and throughput["turns_per_s"] > 0
    assert throughput["audio_s_per_s"] > 0 and throughput["llm_tokens_per_s"] > 0
    assert doc["machine"]["cpu_count"] >= 1 and doc["machine"]["cpu_model"]
    assert len(doc["machine"]["load_average"]) == 3
    assert doc["date"] and doc["settings"]["reply_tokens"] == 16
    assert len(doc["runs"]) == 1 and doc["runs"][0]["ttfa_ms"] == doc["ttfa_ms"]


async def test_bench_against_the_stack_writes_complete_json(stack, tmp_path):
    args = bench_args("--address", stack.address, "--concurrency", "2", "--json", str(tmp_path / "bench.json"))
    runs = await collect(args, [2], stack.address)
    write_json(args.json, build_document(args, runs, machine_info()))
    doc = json.loads(args.json.read_text())
    check_document(doc, mode="distributed", concurrency=2, turns=4)
    assert doc["turns_by_kind"] == {TEXT: 4}


async def test_bench_inprocess_measures_the_same_metrics(tmp_path):
    threads = torch.get_num_threads()
    try:
        args = bench_args("--inprocess", "--concurrency", "1")
        runs = await collect(args, [1], None)
    finally:
        torch.set_num_threads(threads)  # the in-process engines use the services' 1 thread
    doc = json.loads(json.dumps(build_document(args, runs, machine_info())))
    check_document(doc, mode="inprocess", concurrency=1, turns=2)
    assert doc["settings"]["torch_threads"] == 1


def test_workload_is_deterministic_and_mixes_turn_kinds():
    def build():
        return build_workload(sessions=3, turns=6, warmup=1, reply_tokens=8, seed=5, mix="text=1,spoken=1,image=1")

    first, second = build(), build()
    assert first == second
    kinds = [turn.kind for script in first.sessions for turn in script.turns]
    assert len(kinds) == 3 * 7 and {TEXT, SPOKEN, IMAGE} <= set(kinds)
    spoken = next(t for s in first.sessions for t in s.turns if t.kind == SPOKEN)
    assert spoken.pcm16 and 0 < spoken.speech_end_s <= spoken.audio_s
    image = next(t for s in first.sessions for t in s.turns if t.kind == IMAGE)
    assert image.image.startswith(b"\x89PNG")
    assert first.turn_seed(0, 1) == second.turn_seed(0, 1) != first.turn_seed(1, 1)
    with pytest.raises(ValueError):
        build_workload(sessions=1, turns=1, warmup=0, reply_tokens=8, seed=0, mix="video=1")


def test_workload_file_scripts_conversations(tmp_path):
    path = tmp_path / "workload.yaml"
    path.write_text("conversations:\n  - - {kind: text, text: Hi}\n    - {kind: image, text: 'What is this?'}\n")
    workload = build_workload(sessions=2, turns=3, warmup=0, reply_tokens=8, seed=0, workload_file=path)
    assert [t.kind for t in workload.sessions[1].turns] == [TEXT, IMAGE, TEXT]


def test_playback_underruns_and_percentiles():
    sample = TurnSample(0, 0, TEXT, False, sample_rate_hz=1000)
    # 1 s of audio at t=0, the next chunk at t=1.5 (0.5 s stall), then one in time (t=2.0 < 2.5).
    sample.audio_chunks = [(0.0, 1000), (1.5, 1000), (2.0, 500)]
    assert sample.playback() == (1, pytest.approx(500.0))
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    stats = summarize([3.0, None, 1.0, 2.0])
    assert stats["p50"] == 2.0 and stats["n"] == 3 and stats["p50"] <= stats["p90"] <= stats["p99"]
    assert summarize([None]) is None
    assert busy_seconds([(0, 1), (0.5, 2), (3, 4)]) == 3.0


def test_plot_draws_a_png(tmp_path):
    runs = [
        {"concurrency": c, "ttfa_ms": {"p50": 100 * c, "p90": 120 * c, "p99": 150 * c}, "ttft_ms": {"p50": 10 * c}}
        for c in (1, 2, 4)
    ]
    path = tmp_path / "ttfa.png"
    plot_latency(runs, path, "test")
    assert path.read_bytes().startswith(b"\x89PNG")
