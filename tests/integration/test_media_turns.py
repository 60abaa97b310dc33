"""Image and video turns end to end: through the vision service, history by reference."""

from __future__ import annotations


import grpc
import numpy as np
from PIL import Image

from tests.client import Client
from tests.vision.media import audio_only_mp4, encode_image, png_from_header, video_bytes
from vita.assistant.v1 import assistant_pb2
from vita.common.v1 import common_pb2
from vita.llm.v1 import llm_pb2, llm_pb2_grpc

INVALID_ARGUMENT = 3
TOKENS_PER_TILE = 256


def photo(width: int = 640, height: int = 480) -> bytes:
    rng = np.random.default_rng(0)
    return encode_image(Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)), "JPEG")


def image_input(data: bytes, max_tiles: int = 0) -> assistant_pb2.MediaInput:
    return assistant_pb2.MediaInput(image=data, max_tiles=max_tiles)


async def test_image_question_gets_streaming_text_and_speech(stack):
    async with Client(stack.address) as client:
        session_id = await client.create_session(seed=2, max_reply_tokens=16)
        async with client.converse(session_id) as conv:
            one_tile = await conv.turn("What is in this picture?", media=[image_input(photo())])
            tiled = await conv.turn("And now in more detail?", media=[image_input(photo(1400, 700), max_tiles=6)])
        session = await client.get_session(session_id)
    assert one_tile.completed.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED and one_tile.pcm and one_tile.text
    first_prompt = one_tile.of("turn_started")[0].event.turn_started.prompt_tokens
    assert first_prompt > TOKENS_PER_TILE
    # 1400×700 with up to 6 tiles → a 2×1 grid (aspect 2) + thumbnail = 3 tiles; the first image stays cached.
    second = tiled.completed
    assert second.cached_prompt_tokens >= first_prompt
    assert second.prefilled_prompt_tokens >= 3 * TOKENS_PER_TILE
    assert [list(t.media) for t in session.history] == [["image"], ["image"]]


async def test_video_question(stack):
    clip = video_bytes(fmt="mp4", codec="libx264", seconds=2.0, fps=8)
    async with Client(stack.address) as client:
        session_id = await client.create_session(max_reply_tokens=8)
        async with client.converse(session_id) as conv:
            turn = await conv.turn("What happens in the video?", media=[assistant_pb2.MediaInput(video=clip)])
    assert turn.completed.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED
    # Under 4 s: 4 frames of one tile each.
    assert turn.of("turn_started")[0].event.turn_started.prompt_tokens > 4 * TOKENS_PER_TILE


async def test_live_camera_frames_become_the_turns_video(stack):
    frame = photo(320, 240)
    async with Client(stack.address) as client:
        session_id = await client.create_session(max_reply_tokens=8, speech_output=False)
        async with client.converse(session_id) as conv:
            for index in range(6):
                await conv.send(camera_frame=assistant_pb2.CameraFrame(timestamp_ms=index * 500, jpeg=frame))
            turn = await conv.turn("What do you see?")
        session = await client.get_session(session_id)
    assert turn.completed.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED
    assert list(session.history[-1].media) == ["video"]


async def test_cold_llm_cache_is_restored_from_stored_media(stack):
    async with Client(stack.address) as client:
        session_id = await client.create_session(max_reply_tokens=8, speech_output=False)
        async with client.converse(session_id) as conv:
            await conv.turn("Look at this.", media=[image_input(photo())])
            # The LLM loses its cache for the session (eviction, restart, another replica).
            async with grpc.aio.insecure_channel(stack.services["llm"].address) as channel:
                await llm_pb2_grpc.LLMStub(channel).ReleaseSession(
                    llm_pb2.ReleaseSessionRequest(ctx=common_pb2.CallContext(session_id=session_id)))
            again = await conv.turn("What was it?")
    assert again.completed.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED
    assert again.completed.cached_prompt_tokens == 0
    assert again.completed.prefilled_prompt_tokens > TOKENS_PER_TILE


async def test_bad_media_get_invalid_argument_and_leave_the_session_unchanged(stack):
    good = photo()
    bad_cases = {
        "corrupt jpeg": good[: len(good) // 3],
        "not an image": b"this is plain text, not pixels",
        "1x4000": encode_image(Image.new("RGB", (1, 4000)), "PNG"),
        "40000x1": encode_image(Image.new("RGB", (40000, 1)), "PNG"),
        "bomb": png_from_header(10000, 10000),
    }
    async with Client(stack.address) as client:
        session_id = await client.create_session(max_reply_tokens=8, speech_output=False)
        async with client.converse(session_id) as conv:
            for name, data in bad_cases.items():
                turn = await conv.turn(f"about {name}", media=[image_input(data)])
                assert turn.errors and turn.errors[0].code == INVALID_ARGUMENT, name
            no_video = await conv.turn("video?", media=[assistant_pb2.MediaInput(video=audio_only_mp4())])
            assert no_video.errors[0].code == INVALID_ARGUMENT
            truncated = video_bytes(fmt="mp4", codec="libx264", seconds=2.0, fps=8)[:2000]
            assert (await conv.turn("video?", media=[assistant_pb2.MediaInput(video=truncated)])).errors[0].code == INVALID_ARGUMENT
            too_many = await conv.turn("many", media=[image_input(good)] * 5)
            assert too_many.errors[0].code == INVALID_ARGUMENT and "limit is 4" in too_many.errors[0].message
            fine = await conv.turn("ok", media=[image_input(good)])
            assert fine.completed.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED
        session = await client.get_session(session_id)
    assert [t.user_text for t in session.history] == ["ok"]
