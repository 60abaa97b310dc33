"""`vita up` + `vita chat` as a user runs them: real processes, SIGTERM leaves nothing behind; what the
CLI and the launcher tell the user."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import wave
from pathlib import Path

import pytest
import soundfile
from PIL import Image

from apps.chat import SpokenInput, run_turn
from apps.cli import _stack_config, build_parser, served_weights
from apps.launcher import Stack, StackConfig


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_vita_up_then_chat_then_sigterm_leaves_no_process(tmp_path):
    vita = [sys.executable, "-m", "apps.cli"]
    up = subprocess.Popen([*vita, "up", "--port", "0", "--log-dir", str(tmp_path / "logs"),
                           "--data-dir", str(tmp_path / "data")],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        address, lines = None, []
        deadline = time.monotonic() + 240
        while address is None and time.monotonic() < deadline:
            line = up.stdout.readline()
            assert line, f"vita up exited early: {''.join(lines)}"
            lines.append(line)
            if line.startswith("Assistant API on "):
                address = line.split()[3]
        assert address, "vita up did not print the public address"
        gateway = up.stdout.readline()
        assert gateway.startswith("OpenAI-compatible API on http://"), gateway
        with urllib.request.urlopen(gateway.split()[3].removesuffix("/v1") + "/healthz", timeout=30) as health:
            assert health.status == 200
        assert any("RANDOM weights" in line for line in lines)
        processes = descendants(up.pid)
        assert len(processes) >= 3  # redis, the model services, the orchestrator

        out = tmp_path / "reply.wav"
        chat = subprocess.run([*vita, "chat", "--address", address, "--text", "Hi there!", "--seed", "1",
                               "--max-reply-tokens", "12", "--out", str(out)],
                              capture_output=True, text=True, timeout=120)
        assert chat.returncode == 0, chat.stderr
        assert "time to first text token" in chat.stdout and "time to first audio" in chat.stdout
        with wave.open(str(out)) as wav:
            assert wav.getframerate() == 24000 and wav.getnchannels() == 1 and wav.getsampwidth() == 2
            assert wav.getnframes() > 0 and wav.getnframes() % 600 == 0

        photo = tmp_path / "photo.png"
        Image.new("RGB", (640, 480), (30, 120, 200)).save(photo)
        chat = subprocess.run([*vita, "chat", "--address", address, "--image", str(photo), "--text", "What is it?",
                               "--max-reply-tokens", "8", "--out", str(tmp_path / "image.wav")],
                              capture_output=True, text=True, timeout=120)
        assert chat.returncode == 0, chat.stderr

        if shutil.which("espeak-ng"):
            question = tmp_path / "question.wav"
            subprocess.run(["espeak-ng", "-w", str(question), "What time is it?"], check=True)
            flac = tmp_path / "question.flac"
            soundfile.write(flac, *soundfile.read(question))
            for spoken in (question, flac):
                chat = subprocess.run([*vita, "chat", "--address", address, "--audio", str(spoken), "--fast",
                                       "--max-reply-tokens", "8", "--out", str(tmp_path / "spoken.wav")],
                                      capture_output=True, text=True, timeout=120)
                assert chat.returncode == 0, chat.stderr
                assert "time to first audio" in chat.stdout
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in processes if alive(pid)], "processes left behind after SIGTERM"
    assert up.returncode == 0


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
async def test_chat_by_voice_honours_max_reply_tokens(stack, tmp_path):
    """A spoken turn is started by the server from the session's config: the limit must get there."""
    question = tmp_path / "question.wav"
    subprocess.run(["espeak-ng", "-w", str(question), "Tell me everything about the ocean."], check=True)
    report = await run_turn(stack.address, spoken=SpokenInput.from_file(question), fast=True, seed=2,
                            max_reply_tokens=3)
    assert not report.errors, report.errors
    assert report.completed is not None and 0 < report.completed.reply_tokens <= 3


def test_chat_by_voice_on_a_given_session_refuses_a_limit_it_cannot_apply(tmp_path):
    question = tmp_path / "question.wav"
    soundfile.write(question, [0.0] * 1600, 16000)
    chat = subprocess.run([sys.executable, "-m", "apps.cli", "chat", "--address", "127.0.0.1:1", "--audio", str(question),
                           "--session", "s1", "--max-reply-tokens", "5"], capture_output=True, text=True, timeout=60)
    assert chat.returncode == 2 and "--max-reply-tokens with --audio apply to a new session" in chat.stderr


def test_vita_up_names_the_checkpoint_it_serves():
    args = build_parser().parse_args(["up"])
    assert "RANDOM" in served_weights(args, {})
    from_env = served_weights(args, {"VITA_CHECKPOINT": "/models/VITA-1.5"})
    assert "RANDOM" not in from_env and "/models/VITA-1.5" in from_env
    flag = served_weights(build_parser().parse_args(["up", "--checkpoint", "/ckpt"]), {})
    assert "RANDOM" not in flag and "/ckpt" in flag


def test_vita_up_replicas_reach_the_stack_config(capsys):
    args = build_parser().parse_args(["up", "--replicas", "llm=2, speech=3"])
    assert _stack_config(args, None).replicas == {"llm": 2, "speech": 3}
    assert _stack_config(build_parser().parse_args(["up"]), None).replicas == {}
    for bad, says in (("gpu=2", "unknown service"), ("llm", "SERVICE=COUNT"), ("llm=0", "between 1 and 16")):
        with pytest.raises(SystemExit) as refused:
            build_parser().parse_args(["up", "--replicas", bad])
        assert refused.value.code == 2
        assert says in capsys.readouterr().err


@pytest.mark.parametrize("log_to_dir", [True, False], ids=["log-dir", "terminal"])
def test_the_launcher_says_a_service_exited_with_its_code_and_last_log_lines(tmp_path, log_to_dir):
    config = StackConfig(services=("llm",), env={"VITA_CHECKPOINT": str(tmp_path / "no-such-checkpoint")},
                         log_dir=tmp_path / "logs" if log_to_dir else None, start_timeout_s=180)
    started = time.monotonic()
    with pytest.raises(RuntimeError) as failure:
        Stack(config).start()
    message = str(failure.value)
    assert "service llm exited with code 2" in message, message
    assert "llm cannot start" in message and "no-such-checkpoint" in message, message
    assert time.monotonic() - started < 120  # told when it happened, not at the start timeout
