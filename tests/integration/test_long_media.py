"""The longest visual input the model's rules produce is served on the tiny preset: a 60 s clip gives 16
sampled frames of 256 rows each (4096 rows), which a 4096-token context refused."""

from __future__ import annotations

from tests.client import Client
from tests.vision.media import video_bytes
from vita.assistant.v1 import assistant_pb2

TOKENS_PER_TILE = 256


async def test_a_sixty_second_video_turn_completes(stack):
    clip = video_bytes(fmt="mp4", codec="libx264", seconds=60.0, fps=1)
    async with Client(stack.address) as client:
        session_id = await client.create_session(max_reply_tokens=4, speech_output=False)
        async with client.converse(session_id) as conv:
            turn = await conv.turn("What happens in the video?", media=[assistant_pb2.MediaInput(video=clip)])
    assert not turn.errors, turn.errors
    assert turn.completed.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED
    assert turn.of("turn_started")[0].event.turn_started.prompt_tokens > 16 * TOKENS_PER_TILE
