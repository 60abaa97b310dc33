"""Every process's /metrics parses with the Prometheus text parser, and the key series move with traffic."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tests.client import Client, metric, scrape
from tests.integration.test_media_turns import image_input
from tests.vision.media import encode_image
from vita.assistant.v1 import assistant_pb2


def total(samples: dict, name: str) -> float:
    """Sum of a series over all its label values."""
    return sum(value for (sample, _), value in samples.items() if sample == name)


def scrape_all(stack) -> dict[str, dict]:
    ports = {name: service.metrics_port for name, service in stack.services.items()}
    ports["orchestrator"] = stack.orchestrator.metrics_port
    return {name: scrape(port) for name, port in ports.items()}


async def test_metrics_parse_and_move_with_a_turn(stack):
    before = scrape_all(stack)
    assert set(before) == {"llm", "speech", "audio", "vision", "orchestrator"}
    for name, samples in before.items():
        assert metric(samples, f"vita_{name}_ready") == 1.0, name

    rate = 16000
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(1.5 * rate)) / rate) * 32767).astype("<i2").tobytes()
    async with Client(stack.address) as client:
        session_id = await client.create_session(seed=1, max_reply_tokens=12, vad={"enabled": False})
        async with client.converse(session_id) as conv:
            # An image no other test sends: the orchestrator's embedding cache must not spare the encode.
            unique = encode_image(Image.new("RGB", (500, 400), (12, 34, 56)), "PNG")
            image_turn = await conv.turn("What is this?", media=[image_input(unique)])
        conv = await client.converse(session_id, audio_rate=rate).open()
        try:
            step = rate * 40 // 1000 * 2  # 40 ms chunks
            for offset in range(0, len(tone), step):
                await conv.send(audio=assistant_pb2.AudioAppend(data=tone[offset : offset + step]))
            await conv.send(audio_commit=assistant_pb2.AudioCommit())
            spoken_turn = await conv.collect_turn()
        finally:
            conv.call.cancel()
    assert image_turn.completed.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED and spoken_turn.completed is not None

    after = scrape_all(stack)
    grew = lambda service, name: total(after[service], name) > total(before[service], name)  # noqa: E731
    assert grew("llm", "vita_llm_generated_tokens_total")
    assert grew("llm", "vita_llm_rpcs_total")
    assert grew("speech", "vita_speech_codec_tokens_total")
    assert grew("vision", "vita_vision_tiles_total")
    assert grew("audio", "vita_audio_received_audio_seconds_total")
    assert grew("audio", "vita_audio_utterances_total")
    assert grew("orchestrator", "vita_orchestrator_turns_total")
    assert grew("orchestrator", "vita_orchestrator_ttfa_seconds_count")
    assert grew("orchestrator", "vita_orchestrator_stage_seconds_count")
    assert grew("orchestrator", "vita_orchestrator_redis_seconds_count")
