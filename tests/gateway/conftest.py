"""Fixtures of the gateway tests: one gateway process per module in front of the session's real stack,
the official OpenAI client pointed at it, and real speech."""

from __future__ import annotations

import functools
import io
import shutil
import subprocess

import numpy as np
import pytest
import soundfile

# Replies stay short: the tests check shapes and flow, and the tiny preset speaks a token at a time.
REPLY_TOKENS = 6


@pytest.fixture(scope="module")
def gateway(stack):
    process = stack.spawn_gateway()
    yield process
    process.stop(10)


@pytest.fixture(scope="module")
def base_url(gateway) -> str:
    return f"http://{gateway.address}/v1"


@pytest.fixture
async def openai_client(base_url):
    openai = pytest.importorskip("openai")
    # websocket_base_url: the client's beta Realtime connect assumes wss:// otherwise.
    client = openai.AsyncOpenAI(base_url=base_url, websocket_base_url=base_url.replace("http://", "ws://"),
                                api_key="unused-without-keys", max_retries=0, timeout=120)
    yield client
    await client.close()


@functools.lru_cache(maxsize=None)
def spoken_wav(text: str) -> bytes:
    """A WAV of `text` spoken by espeak-ng (the test skips where it is not installed)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (scripts/test.sh installs it)")
    return subprocess.run(["espeak-ng", "--stdout", "-s", "160", text], capture_output=True, check=True).stdout


def spoken_pcm16_24k(text: str) -> bytes:
    """The same speech as the Realtime API takes it: mono PCM16 at 24 kHz."""
    import soxr

    samples, rate = soundfile.read(io.BytesIO(spoken_wav(text)), dtype="float32")
    resampled = soxr.resample(samples, rate, 24_000)
    return (np.clip(resampled, -1, 1) * 32767).astype("<i2").tobytes()


def silence_24k(seconds: float) -> bytes:
    return np.zeros(int(seconds * 24_000), dtype="<i2").tobytes()


def png_data_url() -> str:
    import base64

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
