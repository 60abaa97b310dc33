"""`vita up` + `vita chat` as a user runs them: real processes, SIGTERM leaves nothing behind."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import soundfile
from PIL import Image


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
    up = subprocess.Popen([*vita, "up", "--port", "0", "--log-dir", str(tmp_path / "logs")],
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
