"""The fake model services behind a real orchestrator and a real Redis, and the capacity harness at a
small scale. Timings are checked from below only (a fake never answers faster than configured); how
much slower a busy machine makes it is what the harness measures, not what a test can bound."""

from __future__ import annotations

import time

import numpy as np
import pytest

from apps.capacity.run import Workload, measure_point
from apps.capacity.stack import CapacityStack
from apps.fakes.config import FakeSettings
from apps.fakes.reply import REPLY_TEXT
from tests.client import Client
from vita.assistant.v1 import assistant_pb2

FAST = {
    "llm_first_token_ms": 60, "llm_prefill_ms_per_token": 0.1, "llm_decode_tokens_per_s": 100,
    "llm_reply_tokens": 10, "speech_first_chunk_ms": 40, "speech_realtime_factor": 50,
    "audio_encode_ms": 5, "vision_encode_ms_per_tile": 5,
}


@pytest.fixture(scope="module")
def fake_stack(tmp_path_factory):
    env = {f"VITA_FAKE_{name.upper()}": str(value) for name, value in FAST.items()}
    with CapacityStack(fake_env=env, services=("llm", "speech", "audio", "vision"),
                       log_dir=tmp_path_factory.mktemp("fake-stack-logs")) as stack:
        yield stack


async def test_text_turns_have_the_configured_shape(fake_stack):
    async with Client(fake_stack.address) as client:
        session_id = await client.create_session(max_reply_tokens=32)
        async with client.converse(session_id) as conv:
            sent = time.perf_counter()
            first = await conv.turn("Hello there")
            second = await conv.turn("And again")
    done = first.completed
    assert done.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED, first.errors
    # The reply is the fake's text, cut at its configured length; the state symbol never reaches the client.
    assert REPLY_TEXT.startswith(first.text) and first.text.startswith("Sure, here") and done.reply_tokens == 11
    assert len(first.pcm) > 0 and done.audio_samples == len(first.pcm) // 2
    # First text no sooner than the first token's configured cost, first audio not before the first
    # segment ("Sure,", a decode step later) has been spoken.
    first_text = first.of("text_delta")[0].at - sent
    first_audio = first.of("audio")[0].at - sent
    first_token_s = (FAST["llm_first_token_ms"] + FAST["llm_prefill_ms_per_token"] * done.prefilled_prompt_tokens) / 1000
    assert first_text >= first_token_s
    assert first_audio >= first_token_s + (1000 / FAST["llm_decode_tokens_per_s"] + FAST["speech_first_chunk_ms"]) / 1000
    # The fake LLM keeps the session's prompt like a KV cache: the second turn prefills only its new part.
    again = second.completed
    assert again.cached_prompt_tokens > done.prefilled_prompt_tokens - 5
    assert again.prefilled_prompt_tokens < done.prefilled_prompt_tokens
    stages = {stage.stage for stage in done.timings.stages}
    assert {"llm.prefill", "llm.decode", "speech.ar"} <= stages


async def test_image_and_spoken_turns_go_through_the_fake_encoders(fake_stack):
    rate = 16_000
    speech = (np.sin(np.arange(rate) * 2 * np.pi * 220 / rate) * 8000).astype("<i2").tobytes()
    async with Client(fake_stack.address) as client:
        session_id = await client.create_session(max_reply_tokens=8, vad={"enabled": False})
        async with client.converse(session_id, audio_rate=rate) as conv:
            image = await conv.turn("What is this?", media=[assistant_pb2.MediaInput(image=b"\xff\xd8jpeg", max_tiles=2)])
            for start in range(0, len(speech), 3200):
                await conv.sdk.append_audio(speech[start:start + 3200])
            spoken = await (await conv.sdk.commit_audio()).result()
    assert image.completed.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED, image.errors
    # Two tiles and a thumbnail, 256 rows each.
    assert image.of("turn_started")[0].event.turn_started.prompt_tokens > 3 * 256
    assert spoken.completed is not None and spoken.completed.outcome == "completed"


def test_harness_measures_a_small_point(fake_stack):
    fakes = FakeSettings(**FAST)
    point = measure_point(fake_stack, 10, Workload(warmup_s=1.0, duration_s=4.0, user_speaks_s=0.2), fakes)
    assert point["sessions"] == 10 and point["failed_turns"] == 0 and point["open_failures"] == 0
    assert point["turns"] > 0 and point["turns_per_s"] > 0
    for key in ("added_ttft_ms", "added_ttfa_ms", "ttft_ms", "ttfa_ms", "client_loop_lag_ms"):
        assert point[key]["n"] > 0 and point[key]["p99"] is not None
    assert point["orchestrator_cpu_ms_per_turn"] > 0 and point["orchestrator_cores"] > 0
    # Every turn reads and writes the session in Redis.
    assert point["redis_ops_per_turn"] > 1 and point["redis_in_bytes_per_turn"] > 100
    assert point["redis_commands_per_turn"].get("rpush", 0) > 0
