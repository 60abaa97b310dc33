"""Voice turns end to end: spoken questions streamed through Converse in 40 ms chunks, server VAD, barge-in."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import numpy as np
import pytest
import soundfile
import io

from tests.client import Client, metric, scrape
from vita.assistant.v1 import assistant_pb2

CHUNK_MS = 40
INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED = 3, 5, 8

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def spoken_pcm16(text: str) -> tuple[bytes, int]:
    """espeak-ng speech at its native 22050 Hz (the server resamples it), as PCM16."""
    wav = subprocess.run(["espeak-ng", "--stdout", "-s", "160", text], capture_output=True, check=True).stdout
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="int16")
    return samples.tobytes(), rate


def silence(seconds: float, rate: int) -> bytes:
    return np.zeros(int(seconds * rate), dtype="<i2").tobytes()


async def stream_audio(conv, pcm: bytes, rate: int, pace: float = 0.0) -> None:
    step = rate * CHUNK_MS // 1000 * 2
    for offset in range(0, len(pcm), step):
        await conv.send(audio=assistant_pb2.AudioAppend(data=pcm[offset : offset + step]))
        if pace:
            await asyncio.sleep(CHUNK_MS / 1000 * pace)


async def open_voice(client: Client, session_id: str, rate: int, encoding=assistant_pb2.AUDIO_ENCODING_PCM16):
    return await client.converse(session_id, audio_rate=rate, encoding=encoding).open()


async def test_spoken_question_is_answered_with_speech(stack):
    pcm, rate = spoken_pcm16("What is the weather like in Paris today?")
    async with Client(stack.address) as client:
        session_id = await client.create_session(seed=4, max_reply_tokens=24)
        conv = await open_voice(client, session_id, rate)
        try:
            await stream_audio(conv, silence(0.5, rate) + pcm + silence(1.2, rate), rate)
            turn = await conv.collect_turn()
        finally:
            conv.call.cancel()
        session = await client.get_session(session_id)
    kinds = [r.kind for r in turn.events]
    assert kinds.index("speech_started") < kinds.index("speech_stopped") < kinds.index("turn_started")
    assert turn.completed.outcome in (assistant_pb2.TURN_OUTCOME_COMPLETED, assistant_pb2.TURN_OUTCOME_SUPPRESSED)
    assert turn.of("turn_started")[0].event.turn_started.input == "audio"
    assert turn.completed.timings.eos_to_audio_ms > 0 and turn.pcm
    assert list(session.history[-1].media) == ["audio"]


async def test_push_to_talk_commit_and_silence_makes_no_turn(stack):
    pcm, rate = spoken_pcm16("Hello there, how are you?")
    async with Client(stack.address) as client:
        session_id = await client.create_session(max_reply_tokens=8, speech_output=False, vad={"enabled": False})
        conv = await open_voice(client, session_id, rate)
        try:
            await stream_audio(conv, silence(2.0, rate), rate)  # silence alone: no turn, no error
            await stream_audio(conv, pcm, rate)
            await conv.send(audio_commit=assistant_pb2.AudioCommit(turn_id="ptt-1"))
            turn = await conv.collect_turn()
        finally:
            conv.call.cancel()
    assert not turn.errors and turn.completed.outcome in (assistant_pb2.TURN_OUTCOME_COMPLETED, assistant_pb2.TURN_OUTCOME_SUPPRESSED)
    assert turn.of("turn_started")[0].event.turn_id == "ptt-1"


async def test_barge_in_cancels_the_reply_and_the_new_utterance_is_the_next_turn(stack):
    question, rate = spoken_pcm16("Tell me a very long story about the sea.")
    interruption, _ = spoken_pcm16("Stop, stop. What time is it?")

    def counts():
        llm, speech = scrape(stack.services["llm"].metrics_port), scrape(stack.services["speech"].metrics_port)
        return (metric(llm, "vita_llm_requests_total", outcome="cancelled"),
                metric(speech, "vita_speech_streams_total", outcome="cancelled"))

    before = counts()
    async with Client(stack.address) as client:
        session_id = await client.create_session(seed=8, max_reply_tokens=400)
        conv = await open_voice(client, session_id, rate)
        try:
            await stream_audio(conv, question + silence(1.2, rate), rate)
            events = []
            while True:  # the reply is speaking
                received = await conv.read()
                events.append(received)
                if received.kind == "audio":
                    break
            first_turn_id = received.event.turn_id
            await stream_audio(conv, interruption + silence(1.2, rate), rate, pace=0.5)
            while True:
                received = await conv.read()
                events.append(received)
                if received.kind == "turn_completed" and received.event.turn_id != first_turn_id:
                    break
        finally:
            conv.call.cancel()
        session = await client.get_session(session_id)
    kinds = [(r.kind, r.event.turn_id) for r in events]
    flush = next(r for r in events if r.kind == "playback_flush")
    assert flush.event.turn_id == first_turn_id and flush.event.playback_flush.reason == assistant_pb2.FLUSH_REASON_BARGE_IN
    first_done = next(r for r in events if r.kind == "turn_completed" and r.event.turn_id == first_turn_id)
    assert first_done.event.turn_completed.outcome == assistant_pb2.TURN_OUTCOME_BARGED_IN
    # Nothing of the cancelled reply is sent after the flush.
    after_flush = kinds[kinds.index(("playback_flush", first_turn_id)):]
    assert ("audio", first_turn_id) not in after_flush and ("text_delta", first_turn_id) not in after_flush
    delivered = "".join(r.event.text_delta.text for r in events if r.kind == "text_delta" and r.event.turn_id == first_turn_id)
    assert [t.outcome for t in session.history][-2:][0] == assistant_pb2.TURN_OUTCOME_BARGED_IN
    # The reply keeps what had time to play before the user spoke over it: a prefix of what was sent.
    assert delivered.startswith(session.history[-2].reply_text) and session.history[-2].reply_text == first_done.event.turn_completed.reply_text
    assert session.history[-1].media == ["audio"]
    after = counts()
    assert after[0] >= before[0] + 1 and after[1] >= before[1] + 1


async def test_bad_audio_inputs_get_clear_errors_and_the_session_survives(stack):
    async with Client(stack.address) as client:
        session_id = await client.create_session(max_reply_tokens=8, speech_output=False)
        # No declared sample rate.
        async with client.converse(session_id) as conv:
            await conv.send(audio=assistant_pb2.AudioAppend(data=b"\x00\x00" * 320))
            error = (await conv.read()).event.error
            assert error.code == INVALID_ARGUMENT and "sample rate" in error.message
            # The stream still serves text turns.
            assert (await conv.turn("still there?")).completed.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED
        for absurd in (1, 10_000_000):
            conv = await open_voice(client, session_id, absurd)
            try:
                await conv.send(audio=assistant_pb2.AudioAppend(data=b"\x00\x00" * 320))
                error = (await conv.read()).event.error
                assert error.code == INVALID_ARGUMENT and "8000" in error.message
            finally:
                conv.call.cancel()
        conv = await open_voice(client, session_id, 16000)
        try:
            # An odd byte count: held back until the next byte completes the sample; a commit ends it.
            await conv.send(audio=assistant_pb2.AudioAppend(data=b"\x00\x00\x00"))
            await conv.send(audio_commit=assistant_pb2.AudioCommit(turn_id="odd"))
            error = (await conv.read()).event.error
            assert error.code == INVALID_ARGUMENT and "byte" in error.message
        finally:
            conv.call.cancel()
        conv = await open_voice(client, session_id, 16000, encoding=assistant_pb2.AUDIO_ENCODING_F32)
        try:
            samples = np.zeros(640, dtype="<f4")
            samples[100] = np.nan
            await conv.send(audio=assistant_pb2.AudioAppend(data=samples.tobytes()))
            error = (await conv.read()).event.error
            assert error.code == INVALID_ARGUMENT and "NaN" in error.message
        finally:
            conv.call.cancel()
        session = await client.get_session(session_id)
        assert [t.user_text for t in session.history] == ["still there?"]


async def test_an_utterance_that_never_ends_hits_the_duration_limit(stack):
    pcm, rate = spoken_pcm16("one two three four five six seven eight nine ten eleven twelve")
    async with Client(stack.address) as client:
        session_id = await client.create_session(max_reply_tokens=8, speech_output=False,
                                                 vad={"max_utterance_ms": 1500, "min_silence_ms": 2000})
        conv = await open_voice(client, session_id, rate)
        try:
            await stream_audio(conv, pcm, rate)
            while True:
                received = await conv.read()
                if received.kind == "error":
                    break
            assert received.event.error.code == RESOURCE_EXHAUSTED and "1500 ms" in received.event.error.message
        finally:
            conv.call.cancel()
        assert list((await client.get_session(session_id)).history) == []


async def test_audio_for_a_missing_session_is_not_found(stack):
    import grpc

    async with Client(stack.address) as client:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await open_voice(client, "missing-session", 16000)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
