"""Spoken turns on a local stack (tiny preset): end of speech → first audio byte, and barge-in → last
audio byte of the interrupted reply, as the client sees them. `PYTHONPATH=. python scripts/bench_voice.py --turns 10`.

Speech comes from espeak-ng, streamed at real-time pace in 40 ms chunks, 1.2 s of silence after it (the
VAD needs 500 ms of it to end the utterance). Prints medians and the raw values."""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

from apps.launcher import Stack, StackConfig
from tests.client import Client
from vita.assistant.v1 import assistant_pb2

CHUNK_MS = 40


def spoken(text: str) -> tuple[bytes, int]:
    wav = subprocess.run(["espeak-ng", "--stdout", "-s", "160", text], capture_output=True, check=True).stdout
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="int16")
    return samples.tobytes(), rate


async def stream(call, pcm: bytes, rate: int) -> float:
    step = rate * CHUNK_MS // 1000 * 2
    for offset in range(0, len(pcm), step):
        await call.write(assistant_pb2.ClientEvent(audio=assistant_pb2.AudioAppend(data=pcm[offset : offset + step])))
        await asyncio.sleep(CHUNK_MS / 1000)
    return time.perf_counter()


async def one_round(client: Client, question, interruption, rate: int) -> tuple[float, float]:
    session_id = await client.create_session(seed=1, max_reply_tokens=300)
    call = client.stub.Converse()
    await call.write(assistant_pb2.ClientEvent(start=assistant_pb2.ConverseStart(
        session_id=session_id, input_sample_rate_hz=rate, input_encoding=assistant_pb2.AUDIO_ENCODING_PCM16)))
    await call.read()
    silence = np.zeros(int(1.2 * rate), dtype="<i2").tobytes()
    writer = asyncio.create_task(stream(call, question + silence, rate))
    speech_stopped = first_audio = None
    while first_audio is None:
        event = await call.read()
        kind = event.WhichOneof("event")
        if kind == "speech_stopped" and speech_stopped is None:
            speech_stopped = time.perf_counter()
        elif kind == "audio":
            first_audio = time.perf_counter()
            first_turn = event.turn_id
    await writer
    writer = asyncio.create_task(stream(call, interruption + silence, rate))
    barge_in = last_old_audio = None
    while True:
        event = await call.read()
        kind = event.WhichOneof("event")
        now = time.perf_counter()
        if kind == "speech_started" and barge_in is None:
            barge_in = now
        elif kind == "audio" and event.turn_id == first_turn:
            last_old_audio = now
        elif kind == "turn_completed" and event.turn_id == first_turn:
            break
    writer.cancel()
    call.cancel()
    return (first_audio - speech_stopped) * 1000, max(0.0, ((last_old_audio or barge_in) - barge_in) * 1000)


async def main(turns: int, address: str) -> None:
    question, rate = spoken("What is the weather like in Paris today?")
    interruption, _ = spoken("Wait, stop. Tell me something else.")
    eos, barge = [], []
    async with Client(address) as client:
        for _ in range(turns):
            e, b = await one_round(client, question, interruption, rate)
            eos.append(e)
            barge.append(b)
    print(f"end of speech (client saw speech_stopped) → first audio byte: median {statistics.median(eos):.1f} ms  {[round(x) for x in eos]}")
    print(f"barge-in (client saw speech_started) → last audio byte of the old reply: median {statistics.median(barge):.1f} ms  {[round(x) for x in barge]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=10)
    args = parser.parse_args()
    with Stack(StackConfig(log_dir=Path(tempfile.mkdtemp(prefix="vita-voice-")))) as stack:
        asyncio.run(main(args.turns, stack.address))
