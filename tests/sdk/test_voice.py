"""Spoken turns through the SDK with real speech (espeak-ng) and server VAD: the server starts the turn
when the utterance ends, and `next_turn()` follows it."""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess

import numpy as np
import pytest
import soundfile

import sdk

CHUNK_MS = 40

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def spoken_pcm16(text: str) -> tuple[bytes, int]:
    wav = subprocess.run(["espeak-ng", "--stdout", "-s", "160", text], capture_output=True, check=True).stdout
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="int16")
    return samples.tobytes(), rate


async def test_next_turn_follows_the_turn_server_vad_starts(stack):
    pcm, rate = spoken_pcm16("What is the weather like in Paris today?")
    silence = np.zeros(int(1.2 * rate), dtype="<i2").tobytes()
    async with sdk.AsyncClient(stack.address) as client:
        session = await client.create_session(sdk.SessionConfig(seed=4, max_reply_tokens=16))
        async with client.conversation(session.session_id, audio=sdk.AudioFormat(rate, "pcm16")) as conv:
            upcoming = asyncio.ensure_future(conv.next_turn(timeout=120))  # waiting before the speech ends
            step = rate * CHUNK_MS // 1000 * 2
            audio = silence[: len(silence) // 2] + pcm + silence
            for offset in range(0, len(audio), step):
                assert await conv.append_audio(audio[offset: offset + step])
            result = await (await upcoming).result(timeout=120)
            vad = [type(await conv.next_event(timeout=5)) for _ in range(2)]
    assert vad == [sdk.SpeechStarted, sdk.SpeechStopped]
    assert result.of(sdk.TurnStarted)[0].input == "audio"
    assert result.outcome in ("completed", "suppressed") and result.timings.eos_to_audio_ms > 0
