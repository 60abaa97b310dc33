"""Checkpoints end to end: a synthesized tiny checkpoint in the official layout, served by the real stack
(`VITA_CHECKPOINT`), one text turn with streamed text and 24 kHz speech."""

from __future__ import annotations

from apps.checkpoint.synth import synthesize
from apps.launcher import Stack, StackConfig
from shared.presets import TINY
from tests.client import Client
from vita.assistant.v1 import assistant_pb2

SAMPLES_PER_CODEC_TOKEN = 600


async def test_one_turn_served_from_a_checkpoint_directory(tmp_path):
    root = tmp_path / "VITA1.5_ckpt"
    synthesize(root, TINY)
    with Stack(StackConfig(checkpoint=root, log_dir=tmp_path / "logs")) as stack:
        async with Client(stack.address) as client:
            session_id = await client.create_session(seed=21)
            async with client.converse(session_id) as conv:
                assert conv.ready.weights == f"checkpoint:{root}"
                turn = await conv.turn("Hello! Who are you?", max_reply_tokens=16)
    assert not turn.errors
    completed = turn.completed
    assert completed.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED and completed.reply_tokens > 0
    assert turn.text == completed.reply_text
    assert completed.codec_tokens > 0
    assert len(turn.pcm) // 2 == SAMPLES_PER_CODEC_TOKEN * completed.codec_tokens == completed.audio_samples
