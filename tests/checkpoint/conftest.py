"""One synthesized tiny checkpoint per test session (written through the CLI), and cheap broken copies."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from apps.cli import main as vita


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ckpt") / "VITA1.5_ckpt"
    assert vita(["checkpoint", "synth", str(root), "--preset", "tiny"]) == 0
    return root


def clone(source: Path, target: Path) -> Path:
    """A copy made of hard links: instant, and safe as long as a changed file is replaced, never edited
    in place (`replace_bytes`, `replace_json`, or unlink before writing)."""
    shutil.copytree(source, target, copy_function=os.link)
    return target


def replace_bytes(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


@pytest.fixture
def broken(tiny_checkpoint, tmp_path) -> Path:
    """A private copy of the tiny checkpoint for a test to break."""
    return clone(tiny_checkpoint, tmp_path / "VITA1.5_ckpt")
