"""The Realtime WebSocket with the official OpenAI client: typed turns (GA and beta dialects), spoken
turns with a manual commit and with server VAD, images, and cancel."""

from __future__ import annotations

import pytest

from tests.gateway.conftest import REPLY_TOKENS, png_data_url, silence_24k, spoken_pcm16_24k
from tests.gateway.realtime_helpers import audio_bytes, b64, events_until, of_type

MANUAL = {"type": "realtime", "output_modalities": ["audio"], "max_output_tokens": REPLY_TOKENS,
          "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None}}}


def user_text(text: str, *extra: dict) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}, *extra]}


async def test_a_typed_turn_gets_audio_and_transcript_deltas(openai_client):
    async with openai_client.realtime.connect(model="vita-1.5") as connection:
        created = await connection.recv()
        assert created.type == "session.created" and created.session.id
        await connection.session.update(session=MANUAL)
        updated = await events_until(connection, "session.updated")
        assert updated[-1].session.audio.input.turn_detection is None
        await connection.conversation.item.create(item=user_text("Hello! Who are you?"))
        await connection.response.create()
        events = await events_until(connection, "response.done")
    kinds = [event.type for event in events]
    assert kinds.index("conversation.item.added") < kinds.index("response.created") < kinds.index("response.output_audio.delta")
    pcm = audio_bytes(events, "response.output_audio.delta")
    assert len(pcm) > 0 and len(pcm) % 2 == 0
    transcript = "".join(event.delta for event in of_type(events, "response.output_audio_transcript.delta"))
    done = events[-1].response
    assert done.status == "completed"
    assert done.output[0].content[0].transcript == transcript != ""
    assert done.usage.output_tokens > 0 and done.usage.input_tokens > 0
    # Every delta names the response that response.created announced.
    response_id = of_type(events, "response.created")[0].response.id
    assert {event.response_id for event in of_type(events, "response.output_audio.delta")} == {response_id}


async def test_a_beta_client_is_answered_with_beta_event_names(openai_client):
    async with openai_client.beta.realtime.connect(model="vita-1.5") as connection:
        assert (await connection.recv()).type == "session.created"
        await connection.session.update(session={"modalities": ["text", "audio"], "turn_detection": None,
                                                 "max_response_output_tokens": REPLY_TOKENS})
        updated = await events_until(connection, "session.updated")
        assert updated[-1].session.modalities == ["text", "audio"]
        await connection.conversation.item.create(item=user_text("Say something."))
        await connection.response.create()
        events = await events_until(connection, "response.done")
    kinds = {event.type for event in events}
    assert {"conversation.item.created", "response.audio.delta", "response.audio_transcript.delta",
            "response.audio.done"} <= kinds
    assert not any(kind.startswith("response.output_audio") for kind in kinds)
    assert events[-1].response.status == "completed"


async def test_text_only_output_gets_text_deltas(openai_client):
    async with openai_client.realtime.connect(model="vita-1.5") as connection:
        await connection.recv()
        await connection.session.update(session={**MANUAL, "output_modalities": ["text"]})
        await events_until(connection, "session.updated")
        await connection.conversation.item.create(item=user_text("Describe this picture.",
                                                                 {"type": "input_image", "image_url": png_data_url()}))
        await connection.response.create()
        events = await events_until(connection, "response.done")
    assert of_type(events, "response.output_text.delta") and not of_type(events, "response.output_audio.delta")
    assert events[-1].response.status == "completed"


async def test_appended_audio_and_a_commit_get_a_reply(openai_client):
    speech = spoken_pcm16_24k("What is the weather like in Paris today?")
    async with openai_client.realtime.connect(model="vita-1.5") as connection:
        await connection.recv()
        await connection.session.update(session=MANUAL)
        await events_until(connection, "session.updated")
        audio = silence_24k(0.3) + speech + silence_24k(0.3)
        step = 24_000 * 2 // 10  # 100 ms appends
        for offset in range(0, len(audio), step):
            await connection.input_audio_buffer.append(audio=b64(audio[offset: offset + step]))
        await connection.input_audio_buffer.commit()
        committed = await events_until(connection, "input_audio_buffer.committed")
        await connection.response.create()
        events = await events_until(connection, "response.done")
    item_id = committed[-1].item_id
    added = [event.item for event in of_type(events, "conversation.item.added")]
    assert item_id  # the user's audio item, then the assistant's
    assert events[-1].response.status in ("completed", "cancelled")  # cancelled: judged not addressed to it
    if events[-1].response.status == "completed":
        assert audio_bytes(events, "response.output_audio.delta")
    assert any(item.role == "assistant" for item in added)


async def test_server_vad_turns_speech_into_a_response(openai_client):
    speech = spoken_pcm16_24k("Tell me a short story about a cat.")
    session = {**MANUAL, "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}}
    async with openai_client.realtime.connect(model="vita-1.5") as connection:
        await connection.recv()
        await connection.session.update(session=session)
        updated = await events_until(connection, "session.updated")
        assert updated[-1].session.audio.input.turn_detection.type == "server_vad"
        audio = silence_24k(0.5) + speech + silence_24k(1.5)
        step = 24_000 * 2 // 25  # 40 ms appends
        for offset in range(0, len(audio), step):
            await connection.input_audio_buffer.append(audio=b64(audio[offset: offset + step]))
        events = await events_until(connection, "response.done")
    kinds = [event.type for event in events]
    for kind in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                 "input_audio_buffer.committed", "response.created"):
        assert kind in kinds
    assert kinds.index("input_audio_buffer.speech_stopped") < kinds.index("input_audio_buffer.committed") < kinds.index("response.created")
    started, stopped = of_type(events, "input_audio_buffer.speech_started")[0], of_type(events, "input_audio_buffer.speech_stopped")[0]
    assert started.item_id == stopped.item_id == of_type(events, "input_audio_buffer.committed")[0].item_id
    assert stopped.audio_end_ms > started.audio_start_ms


async def test_response_cancel_ends_the_response_as_cancelled(openai_client):
    async with openai_client.realtime.connect(model="vita-1.5") as connection:
        await connection.recv()
        await connection.session.update(session={**MANUAL, "max_output_tokens": 200})
        await events_until(connection, "session.updated")
        await connection.conversation.item.create(item=user_text("Tell me a very long story."))
        await connection.response.create()
        before = await events_until(connection, "response.output_audio.delta")
        await connection.response.cancel()
        events = before + await events_until(connection, "response.done")
        done = events[-1].response
        assert done.status == "cancelled" and done.status_details.reason == "client_cancelled"
        # What the client played of it: passed on as the playback position.
        await connection.conversation.item.truncate(item_id=done.output[0].id, content_index=0, audio_end_ms=0)
        truncated = await events_until(connection, "conversation.item.truncated")
        assert truncated[-1].item_id == done.output[0].id
        # The connection goes on: the next response works.
        await connection.conversation.item.create(item=user_text("Hi again."))
        await connection.response.create(response={"max_output_tokens": REPLY_TOKENS})
        again = await events_until(connection, "response.done")
    assert again[-1].response.status == "completed"


async def test_a_second_response_while_one_runs_is_refused(openai_client):
    async with openai_client.realtime.connect(model="vita-1.5") as connection:
        await connection.recv()
        await connection.session.update(session=MANUAL)
        await events_until(connection, "session.updated")
        await connection.conversation.item.create(item=user_text("Hello."))
        await connection.response.create()
        await events_until(connection, "response.created")
        await connection.response.create()
        events = await events_until(connection, "response.done")
    errors = of_type(events, "error")
    assert [error.error.code for error in errors] == ["conversation_already_has_active_response"]
    assert events[-1].response.status == "completed"
