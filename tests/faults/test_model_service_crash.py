"""kill -9 of a model service in the middle of a turn: that turn ends with a clear status within a bound,
nothing else crashes, the session and its history stay, and once the service is back on its port the next
turn works."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from PIL import Image

import sdk
from tests.faults.processes import assert_all_serving, kill9, restart_if_dead, restart_service, stack_processes
from tests.vision.media import encode_image

# Generous: the turn must end by this, not by a client timeout, however slow the machine.
CLEAR_STATUS_WITHIN_S = 30.0
# A dead dependency is UNAVAILABLE (retryable); never INTERNAL or UNKNOWN.
CLEAR_CODES = {grpc.StatusCode.UNAVAILABLE}
CONFIG = sdk.SessionConfig(seed=7, max_reply_tokens=6)
LONG_REPLY_TOKENS = 2000  # still generating (LLM) and speaking (speech) when the kill lands

# Which service dies, and the first event of the turn that shows it is at work on it.
MID_TURN = {"llm": sdk.TextDelta, "speech": sdk.AudioChunk}


async def first_of(turn: sdk.Turn, kind: type) -> None:
    async for event in turn.events():
        if isinstance(event, kind):
            return
    raise AssertionError(f"the turn ended before any {kind.__name__}")


@pytest.mark.parametrize("name", sorted(MID_TURN))
async def test_kill9_of_a_model_service_mid_turn_costs_only_that_turn(fault_stack, ledger, name):
    async with sdk.AsyncClient(fault_stack.address) as client:
        try:
            async with await client.start(CONFIG, reconnect=None) as conv:
                before = await conv.ask("Warm up.", timeout=60)
                assert before.outcome == "completed"
                turn = await conv.send_text("Tell me a very long story.", max_reply_tokens=LONG_REPLY_TOKENS)
                await asyncio.wait_for(first_of(turn, MID_TURN[name]), 60)
                await kill9(fault_stack.services[name])
                ledger.injected()

                with pytest.raises(sdk.TurnFailed) as failed:
                    await turn.result(timeout=CLEAR_STATUS_WITHIN_S)
                assert failed.value.code in CLEAR_CODES, failed.value
                assert conv.connected  # the stream outlives the turn
                others = [p for p in stack_processes(fault_stack) if p.name != name]
                await assert_all_serving(*others)
                stored = await ledger.check(client, conv.session_id, [before.turn_id])
                assert stored[0] == before.turn_id

                await restart_service(fault_stack, name)
                after = await conv.ask("Are you back?", timeout=60)
                assert after.outcome == "completed" and after.text
                stored = await ledger.check(client, conv.session_id, [before.turn_id, after.turn_id])
                assert stored[0] == before.turn_id and stored[-1] == after.turn_id
        finally:
            await restart_if_dead(fault_stack, name)


def photo(seed: int) -> sdk.Image:
    """A new picture per seed: the orchestrator caches the embeddings of one it has seen."""
    pixels = np.random.default_rng(seed).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    return sdk.Image(encode_image(Image.fromarray(pixels), "JPEG"))


async def test_a_dead_vision_service_fails_image_turns_only(fault_stack, ledger):
    """An encode is too short to kill in the middle: the service is dead when the image turn comes."""
    async with sdk.AsyncClient(fault_stack.address) as client:
        try:
            async with await client.start(CONFIG, reconnect=None) as conv:
                before = await conv.ask("What is this?", media=[photo(1)], timeout=60)
                assert before.outcome == "completed"
                await kill9(fault_stack.services["vision"])
                ledger.injected()
                with pytest.raises(sdk.TurnFailed) as failed:
                    await conv.ask("And this?", media=[photo(2)], timeout=CLEAR_STATUS_WITHIN_S)
                assert failed.value.code in CLEAR_CODES, failed.value
                text_only = await conv.ask("Just text, then.", timeout=60)  # the rest of the stack serves on
                assert text_only.outcome == "completed"
                await assert_all_serving(*[p for p in stack_processes(fault_stack) if p.name != "vision"])

                await restart_service(fault_stack, "vision")
                after = await conv.ask("And now?", media=[photo(3)], timeout=60)
                assert after.outcome == "completed"
                completed = [before.turn_id, text_only.turn_id, after.turn_id]
                stored = await ledger.check(client, conv.session_id, completed)
                assert [t for t in stored if t in completed] == completed
        finally:
            await restart_if_dead(fault_stack, "vision")


async def unclaimed_events(conv: sdk.Conversation) -> list[sdk.Event]:
    """The events no turn handle claimed that have arrived by now."""
    events = []
    while True:
        try:
            events.append(await conv.next_event(timeout=0.5))
        except TimeoutError:
            return events


def utterance(seconds: float) -> bytes:
    """A voiced-sounding signal; push-to-talk (VAD off), so the commit decides where the turn ends."""
    t = np.arange(int(16_000 * seconds)) / 16_000
    phase = 2 * np.pi * np.cumsum(120 + 40 * np.sin(2 * np.pi * 0.7 * t)) / 16_000
    return (sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.25 * 32767).astype("<i2").tobytes()


async def append(conv: sdk.Conversation, pcm: bytes, chunk_bytes: int = 1280) -> None:
    for offset in range(0, len(pcm), chunk_bytes):
        await conv.append_audio(pcm[offset: offset + chunk_bytes])


async def test_kill9_of_the_audio_service_mid_utterance_fails_that_commit_only(fault_stack, ledger):
    config = sdk.SessionConfig(seed=9, max_reply_tokens=6, vad=sdk.VoiceActivity(enabled=False))
    async with sdk.AsyncClient(fault_stack.address) as client:
        try:
            session = await client.create_session(config)
            conv = client.conversation(session.session_id, audio=sdk.AudioFormat(16_000, "pcm16"), reconnect=None)
            async with conv:
                await append(conv, utterance(1.0))
                before = await (await conv.commit_audio()).result(timeout=60)
                assert before.outcome in ("completed", "suppressed")

                await append(conv, utterance(0.6))  # the audio service is encoding this utterance...
                await kill9(fault_stack.services["audio"])  # ...when it dies
                ledger.injected()
                with pytest.raises(sdk.TurnFailed) as failed:
                    await (await conv.commit_audio()).result(timeout=CLEAR_STATUS_WITHIN_S)
                assert failed.value.code in CLEAR_CODES, failed.value

                # Speaking on into the outage: the chunks are dropped at once (not each waiting out a
                # connect deadline, which would take 25 x 3 s), the commit gets the outage's status, and
                # the outage is reported once, not once per chunk.
                await append(conv, utterance(1.0))
                with pytest.raises(sdk.TurnFailed) as failed:
                    await (await conv.commit_audio()).result(timeout=CLEAR_STATUS_WITHIN_S)
                assert failed.value.code in CLEAR_CODES, failed.value
                stream_errors = [e for e in await unclaimed_events(conv) if isinstance(e, sdk.TurnError) and not e.turn_id]
                assert len(stream_errors) <= 1, stream_errors

                typed = await conv.ask("Typing instead.", timeout=60)  # the rest of the stack serves on
                assert typed.outcome == "completed"
                await assert_all_serving(*[p for p in stack_processes(fault_stack) if p.name != "audio"])

                await restart_service(fault_stack, "audio")
                await append(conv, utterance(1.0))
                after = await (await conv.commit_audio()).result(timeout=60)
                assert after.outcome in ("completed", "suppressed")
                completed = [before.turn_id, typed.turn_id, after.turn_id]
                stored = await ledger.check(client, conv.session_id, completed)
                assert [t for t in stored if t in completed] == completed
        finally:
            await restart_if_dead(fault_stack, "audio")
