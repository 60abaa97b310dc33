"""Turns through the SDK against a real stack: text with timings, streaming, cancel, errors, audio
append + commit, media and camera frames."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from PIL import Image

import sdk

SAMPLES_PER_CODEC_TOKEN = 600


async def test_ask_returns_text_speech_timings_and_timed_events(stack):
    async with sdk.AsyncClient(stack.address) as client:
        async with await client.start(sdk.SessionConfig(seed=11)) as conv:
            result = await conv.ask("Hello! Who are you?", max_reply_tokens=24)
    done = result.completed
    assert result.outcome == "completed" and result.text == done.reply_text and done.reply_tokens > 0
    assert len(result.pcm) // 2 == done.audio_samples == SAMPLES_PER_CODEC_TOKEN * done.codec_tokens
    assert result.sample_rate_hz == 24000
    assert result.timings.ttft_ms > 0 and result.timings.ttfa_ms >= result.timings.ttft_ms
    assert {s.stage.split(".")[0] for s in result.timings.stages} >= {"llm", "speech"}
    # Client-side latency, from the moment the text left to the first delta / audio chunk.
    assert 0 < result.client_ttft_ms <= result.client_ttfa_ms
    kinds = [type(e) for e in result.events]
    assert kinds[0] is sdk.TurnStarted and kinds[-1] is sdk.TurnCompleted
    arrivals = [e.received_at for e in result.events]
    assert arrivals == sorted(arrivals) and all(e.turn_id == result.turn_id for e in result.events)


async def test_a_turn_streams_its_events_and_cancel_stops_it(stack):
    async with sdk.AsyncClient(stack.address) as client:
        async with await client.start(sdk.SessionConfig(seed=9, max_reply_tokens=400)) as conv:
            turn = await conv.send_text("Talk for a long time")
            async for event in turn.events():
                if isinstance(event, sdk.AudioChunk):
                    break  # the reply is speaking
            await turn.cancel()
            result = await turn.result(timeout=60)
            session = await client.get_session(conv.session_id)
    assert result.outcome == "cancelled" and result.completed.reply_tokens < 400
    assert [e.reason for e in result.of(sdk.PlaybackFlush)] == ["cancel"]
    assert session.history[-1].turn_id == turn.turn_id and session.history[-1].outcome == "cancelled"


async def test_a_refused_turn_raises_turn_failed_and_the_stream_stays_open(stack):
    async with sdk.AsyncClient(stack.address) as client:
        async with await client.start(sdk.SessionConfig(max_reply_tokens=4, speech_output=False)) as conv:
            with pytest.raises(sdk.TurnFailed) as failed:
                await conv.ask("   ")
            assert failed.value.code == grpc.StatusCode.INVALID_ARGUMENT and "empty" in failed.value.message
            assert (await conv.ask("Still there?")).outcome == "completed"


async def test_audio_append_and_commit_make_a_spoken_turn(stack):
    rate = 16000
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(1.5 * rate)) / rate) * 32767).astype("<i2").tobytes()
    config = sdk.SessionConfig(max_reply_tokens=8, speech_output=False, vad=sdk.VoiceActivity(enabled=False))
    async with sdk.AsyncClient(stack.address) as client:
        session = await client.create_session(config)
        async with client.conversation(session.session_id, audio=sdk.AudioFormat(rate, "pcm16")) as conv:
            step = rate * 40 // 1000 * 2  # 40 ms chunks
            for offset in range(0, len(tone), step):
                assert await conv.append_audio(tone[offset: offset + step])
            turn = await conv.commit_audio(turn_id="ptt-sdk")
            result = await turn.result(timeout=120)
        stored = await client.get_session(session.session_id)
    assert result.turn_id == "ptt-sdk" and result.of(sdk.TurnStarted)[0].input == "audio"
    assert result.outcome in ("completed", "suppressed")
    assert stored.history[-1].media == ("audio",)


async def test_audio_needs_a_declared_format(stack):
    async with sdk.AsyncClient(stack.address) as client:
        async with await client.start() as conv:
            with pytest.raises(ValueError):
                await conv.append_audio(b"\x00\x00")


async def test_image_turn_and_camera_frames(stack):
    photo = io.BytesIO()
    Image.new("RGB", (320, 240), (200, 120, 40)).save(photo, "JPEG")
    async with sdk.AsyncClient(stack.address) as client:
        async with await client.start(sdk.SessionConfig(max_reply_tokens=6, speech_output=False)) as conv:
            pictured = await conv.ask("What is in this picture?", media=[sdk.Image(photo.getvalue())])
            for index in range(2):
                assert await conv.send_camera_frame(photo.getvalue(), timestamp_ms=index * 500)
            seen = await conv.ask("What do you see?")
            stored = await client.get_session(conv.session_id)
    assert pictured.outcome == seen.outcome == "completed"
    # Live frames become the next turn's video.
    assert stored.history[0].media == ("image",) and stored.history[1].media == ("video",)
