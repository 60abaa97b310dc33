"""Which handle follows which turn, against the scripted in-process server: turns the server starts by
itself (server VAD), a commit that VAD overtook, stream-level refusals."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import sdk
from tests.sdk.scripted_server import ScriptedServer

PCM16_16K = sdk.AudioFormat(16000, "pcm16")


async def test_next_turn_follows_a_turn_the_server_started():
    async with ScriptedServer() as server, sdk.AsyncClient(server.address) as client:
        async with client.conversation("s1", audio=PCM16_16K) as conv:
            waiting = asyncio.ensure_future(conv.next_turn(timeout=10))
            await conv.append_audio(b"end-of-utterance")
            turn = await waiting
            result = await turn.result(timeout=10)
            assert result.turn_id == "vad-1" and result.of(sdk.TurnStarted)[0].input == "audio"
            assert result.text == "hm" and result.outcome == ""  # the script's completion has no outcome
            with pytest.raises(TimeoutError):
                await conv.next_event(timeout=0.3)  # the claimed turn's events went to its handle only


async def test_a_turn_nobody_claimed_goes_to_events():
    async with ScriptedServer() as server, sdk.AsyncClient(server.address) as client:
        async with client.conversation("s1", audio=PCM16_16K) as conv:
            await conv.append_audio(b"end-of-utterance")
            kinds = []
            while not kinds or kinds[-1] is not sdk.TurnCompleted:
                kinds.append(type(await conv.next_event(timeout=10)))
            assert kinds[:2] == [sdk.TurnStarted, sdk.TextDelta] and sdk.AudioChunk in kinds


async def test_a_commit_overtaken_by_vad_follows_the_turn_vad_started():
    async with ScriptedServer() as server, sdk.AsyncClient(server.address) as client:
        async with client.conversation("s1", audio=PCM16_16K) as conv:
            await conv.append_audio(b"end-of-utterance")
            turn = await conv.commit_audio(turn_id="mine")
            result = await turn.result(timeout=10)
            assert turn.turn_id == result.turn_id == "vad-1"
            plain = await (await conv.commit_audio(turn_id="mine-2")).result(timeout=10)
            assert plain.turn_id == "mine-2"


async def test_a_stream_level_refusal_fails_next_turn():
    async with ScriptedServer() as server, sdk.AsyncClient(server.address) as client:
        async with client.conversation("s1", audio=PCM16_16K) as conv:
            waiting = asyncio.ensure_future(conv.next_turn(timeout=10))
            await conv.append_audio(b"bad")
            with pytest.raises(sdk.TurnFailed) as failed:
                await waiting
            assert failed.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert isinstance(await conv.next_event(timeout=5), sdk.TurnError)  # also in events()
