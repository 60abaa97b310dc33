"""Bad and awkward input to the public API, end to end: audio cut anywhere, bytes that do not parse,
ids of any length, a new turn right after a cancel, and commits with nothing to commit. Each gets a clear
status (never INTERNAL or UNKNOWN), and the stream and the session stay usable."""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess

import grpc
import numpy as np
import pytest

import sdk
from apps.chat import SpokenInput, run_turn
from tests.client import Client, Conversation, Received
from vita.assistant.v1 import assistant_pb2

INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION = 3, 5, 9
CONVERSE = "/vita.assistant.v1.Assistant/Converse"
GET_SESSION = "/vita.assistant.v1.Assistant/GetSession"
# Longest status message a client should ever get back: far below gRPC's 8 KiB metadata limit.
MESSAGE_BOUND = 300


def noise_pcm16(seconds: float, rate: int = 16000, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * rate)) * 0.1 * 32767).astype("<i2").tobytes()


def noise_f32(seconds: float, rate: int = 16000, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * rate)) * 0.1).astype("<f4").tobytes()


async def push_to_talk(client: Client, encoding=assistant_pb2.AUDIO_ENCODING_PCM16) -> Conversation:
    session_id = await client.create_session(max_reply_tokens=4, speech_output=False, vad={"enabled": False})
    return await client.converse(session_id, audio_rate=16000, encoding=encoding).open()


async def until(conv: Conversation, done, timeout: float = 60.0) -> list[Received]:
    """Events until `done(received)` is true for one of them (included)."""
    events = []
    while True:
        received = await conv.read(timeout)
        events.append(received)
        if done(received):
            return events


def completed(turn_id: str):
    return lambda r: r.kind == "turn_completed" and r.event.turn_id == turn_id


def errors(events: list[Received]) -> list[tuple[str, int, str]]:
    return [(r.event.turn_id, r.event.error.code, r.event.error.message) for r in events if r.kind == "error"]


# ----- audio cut anywhere --------------------------------------------------------------------------


async def test_pcm16_cut_inside_samples_is_buffered_into_whole_samples(stack):
    pcm = noise_pcm16(0.3)
    async with Client(stack.address) as client:
        conv = await push_to_talk(client)
        try:
            for offset in range(401):  # one byte at a time
                await conv.send(audio=assistant_pb2.AudioAppend(data=pcm[offset : offset + 1]))
            for offset in range(401, len(pcm), 333):  # then odd-sized chunks; the total is even
                await conv.send(audio=assistant_pb2.AudioAppend(data=pcm[offset : offset + 333]))
            await conv.send(audio_commit=assistant_pb2.AudioCommit(turn_id="odd-1"))
            events = await until(conv, lambda r: r.kind in ("turn_completed", "error"))
        finally:
            conv.call.cancel()
    assert errors(events) == []
    assert [r.event.turn_id for r in events if r.kind == "turn_started"] == ["odd-1"]


async def test_audio_ending_inside_a_sample_gets_one_invalid_argument_and_the_stream_goes_on(stack):
    async with Client(stack.address) as client:
        conv = await push_to_talk(client)
        try:
            pcm = noise_pcm16(0.3, seed=1)
            await conv.send(audio=assistant_pb2.AudioAppend(data=pcm + b"\x01"))  # one stray byte
            await conv.send(audio_commit=assistant_pb2.AudioCommit(turn_id="stray"))
            await conv.send(audio=assistant_pb2.AudioAppend(data=pcm))
            await conv.send(audio_commit=assistant_pb2.AudioCommit(turn_id="whole"))
            events = await until(conv, completed("whole"))
        finally:
            conv.call.cancel()
    (refused,) = errors(events)
    assert refused[:2] == ("stray", INVALID_ARGUMENT) and "stray bytes" in refused[2]
    assert [r.event.turn_id for r in events if r.kind == "turn_started"] == ["whole"]


async def test_refused_audio_gets_one_error_not_one_per_chunk(stack):
    bad = np.zeros(640, dtype="<f4")
    bad[100] = np.nan
    async with Client(stack.address) as client:
        conv = await push_to_talk(client, assistant_pb2.AUDIO_ENCODING_F32)
        try:
            for _ in range(12):
                await conv.send(audio=assistant_pb2.AudioAppend(data=bad.tobytes()))
            first = await until(conv, lambda r: r.kind == "error")
            # Later chunks are ignored until the commit, which is answered; then audio is taken again.
            await conv.send(audio_commit=assistant_pb2.AudioCommit(turn_id="after-nan"))
            await conv.send(audio=assistant_pb2.AudioAppend(data=noise_f32(0.3)))
            await conv.send(audio_commit=assistant_pb2.AudioCommit(turn_id="good"))
            rest = await until(conv, completed("good"))
        finally:
            conv.call.cancel()
    ((_, code, message),) = errors(first)
    assert code == INVALID_ARGUMENT and "NaN" in message and "next audio_commit" in message
    assert errors(rest) == [("after-nan", FAILED_PRECONDITION, errors(rest)[0][2])]
    assert "nothing to commit" in errors(rest)[0][2]
    assert [r.event.turn_id for r in rest if r.kind == "turn_started"] == ["good"]


# ----- bytes that do not parse, values out of range -----------------------------------------------


def _raw_turn_with_bad_utf8(turn_id: bytes) -> bytes:
    """ClientEvent{turn: UserTurn{turn_id, text: b"\\xff\\xfe"}} written by hand: no protobuf library
    serialises a string that is not UTF-8."""
    inner = b"\x0a" + bytes([len(turn_id)]) + turn_id + b"\x12\x02\xff\xfe"
    return b"\x12" + bytes([len(inner)]) + inner


def _start(session_id: str, **fields) -> bytes:
    return assistant_pb2.ClientEvent(start=assistant_pb2.ConverseStart(session_id=session_id, **fields)).SerializeToString()


async def _raw_call(channel: grpc.aio.Channel, messages: list[bytes], until_kind: str | None = None):
    """Sends raw messages on a Converse call; returns (events, status code, details)."""
    call = channel.stream_stream(CONVERSE, request_serializer=None,
                                 response_deserializer=assistant_pb2.ServerEvent.FromString)(timeout=60)
    events = []
    try:
        for message in messages:
            await call.write(message)
        async for event in call:
            events.append(event)
            if until_kind and event.WhichOneof("event") == until_kind:
                call.cancel()
                return events, None, ""
    except grpc.aio.AioRpcError as error:
        return events, error.code(), error.details()
    except asyncio.InvalidStateError:
        pass  # the server ended the call while we wrote: its status follows
    return events, await call.code(), await call.details()


async def test_text_that_is_not_utf8_and_unparseable_events_are_invalid_argument(stack):
    async with Client(stack.address) as client:
        session_id = await client.create_session(max_reply_tokens=4, speech_output=False)
    good_turn = assistant_pb2.ClientEvent(turn=assistant_pb2.UserTurn(turn_id="fine", text="hello")).SerializeToString()
    async with grpc.aio.insecure_channel(stack.address) as channel:
        # Mid-stream: each bad event gets an error event, and the stream goes on to serve a good turn.
        events, _, _ = await _raw_call(
            channel, [_start(session_id), _raw_turn_with_bad_utf8(b"bad"), b"\xff\xff\xff", good_turn], "turn_completed"
        )
        kinds = [e.WhichOneof("event") for e in events]
        assert kinds[0] == "ready" and kinds[-1] == "turn_completed" and events[-1].turn_id == "fine"
        bad = [e.error for e in events if e.WhichOneof("event") == "error"]
        assert [e.code for e in bad] == [INVALID_ARGUMENT, INVALID_ARGUMENT]
        assert "UTF-8" in bad[0].message and "could not be parsed" in bad[1].message
        # As the first event: the stream ends with INVALID_ARGUMENT.
        _, code, details = await _raw_call(channel, [b"\xff\xff\xff"])
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "could not be parsed" in details
        # A unary call with bytes that do not parse.
        get = channel.unary_unary(GET_SESSION, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await get(b"\x0a\x02\xff\xfe", timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in err.value.details()
        # An encoding this API does not define.
        _, code, details = await _raw_call(channel, [_start(session_id, input_sample_rate_hz=16000, input_encoding=7)])
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "input_encoding 7" in details
    async with Client(stack.address) as client:
        assert [t.user_text for t in (await client.get_session(session_id)).history] == ["hello"]


async def test_ids_are_validated_and_never_echoed(stack):
    huge, spaced = "s" * 10_240, "has spaces"
    async with Client(stack.address) as client:
        stub, metadata = client.stub, client.metadata
        for bad in (huge, spaced):
            for call, request in ((stub.GetSession, assistant_pb2.GetSessionRequest(session_id=bad)),
                                  (stub.DeleteSession, assistant_pb2.DeleteSessionRequest(session_id=bad))):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call(request, metadata=metadata)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
                assert "session_id" in err.value.details() and len(err.value.details()) < MESSAGE_BOUND
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.converse(bad).open()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(err.value.details()) < MESSAGE_BOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetSession(assistant_pb2.GetSessionRequest(session_id="a" * 128), metadata=metadata)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and len(err.value.details()) < MESSAGE_BOUND

        session_id = await client.create_session(max_reply_tokens=4, speech_output=False)
        async with client.converse(session_id) as conv:
            for event in (assistant_pb2.ClientEvent(turn=assistant_pb2.UserTurn(turn_id="t" * 10_240, text="hi")),
                          assistant_pb2.ClientEvent(cancel=assistant_pb2.CancelTurn(turn_id="bad id")),
                          assistant_pb2.ClientEvent(audio_commit=assistant_pb2.AudioCommit(turn_id="x" * 129))):
                await conv.sdk.send_event(event)
                error = await conv.read()
                assert error.kind == "error" and error.event.error.code == INVALID_ARGUMENT
                assert error.event.turn_id == "" and "turn_id" in error.event.error.message
                assert len(error.event.error.message) < MESSAGE_BOUND
            assert (await conv.turn("still there?")).completed.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED


# ----- a new turn right after a cancel -------------------------------------------------------------


async def test_a_new_turn_right_after_a_cancel_is_accepted(stack):
    async with Client(stack.address) as client:
        session_id = await client.create_session(seed=2, max_reply_tokens=300)
        async with client.converse(session_id) as conv:
            # Cancelled while the reply streams: the next turn goes out the moment the flush is read.
            await conv.send(turn=assistant_pb2.UserTurn(turn_id="long-1", text="Tell me a long story."))
            await until(conv, lambda r: r.kind == "text_delta")
            await conv.send(cancel=assistant_pb2.CancelTurn(turn_id="long-1"))
            await until(conv, lambda r: r.kind == "playback_flush")
            await conv.send(turn=assistant_pb2.UserTurn(turn_id="next-1", text="Hi", max_reply_tokens=4))
            first = await until(conv, completed("next-1"))
            # Cancelled before its reply began: the cancel is answered with the cancelled completion,
            # and the next turn goes out the moment that is read.
            await conv.send(turn=assistant_pb2.UserTurn(turn_id="early", text="Tell me a long story."))
            await conv.send(cancel=assistant_pb2.CancelTurn(turn_id="early"))
            early = await until(conv, completed("early"))
            await conv.send(turn=assistant_pb2.UserTurn(turn_id="next-2", text="Hi", max_reply_tokens=4))
            second = await until(conv, completed("next-2"))
        session = await client.get_session(session_id)
    assert errors(first + early + second) == []
    outcomes = {r.event.turn_id: r.event.turn_completed.outcome for r in first + early + second if r.kind == "turn_completed"}
    assert outcomes["long-1"] == outcomes["early"] == assistant_pb2.TURN_OUTCOME_CANCELLED
    assert outcomes["next-1"] == outcomes["next-2"] == assistant_pb2.TURN_OUTCOME_COMPLETED
    history = [t.turn_id for t in session.history]
    assert history[0] == "long-1" and history[-1] == "next-2" and "next-1" in history
    assert session.running_turn_id == ""


# ----- every commit is answered --------------------------------------------------------------------


async def test_every_commit_is_answered(stack):
    async with Client(stack.address) as client:
        conv = await push_to_talk(client)
        try:
            await conv.send(audio_commit=assistant_pb2.AudioCommit(turn_id="empty"))
            (error,) = errors(await until(conv, lambda r: r.kind == "error"))
            assert error[:2] == ("empty", FAILED_PRECONDITION) and "nothing to commit" in error[2]
            await conv.send(audio=assistant_pb2.AudioAppend(data=noise_pcm16(0.05)))  # under 85 ms
            await conv.send(audio_commit=assistant_pb2.AudioCommit(turn_id="short"))
            (error,) = errors(await until(conv, lambda r: r.kind == "error"))
            assert error[:2] == ("short", INVALID_ARGUMENT) and "50 ms" in error[2]
        finally:
            conv.call.cancel()

        # Server VAD, audio in which it finds no speech: the commit (what `vita chat --audio` sends at the
        # end of its file) fails the turn handle instead of leaving it waiting.
        session_id = await client.create_session(max_reply_tokens=4, speech_output=False)
        async with client.sdk.conversation(session_id, audio=sdk.AudioFormat(16000, "pcm16"), reconnect=None) as conv:
            silence = bytes(16000 * 2)
            for offset in range(0, len(silence), 1280):
                await conv.append_audio(silence[offset : offset + 1280])
            turn = await conv.commit_audio(turn_id="silent")
            with pytest.raises(sdk.TurnFailed) as failed:
                await turn.result(timeout=60)
        assert failed.value.code == grpc.StatusCode.FAILED_PRECONDITION and "nothing to commit" in str(failed.value)


async def test_chat_on_audio_without_speech_ends_with_a_clear_error(stack):
    """`vita chat --audio` on a file where VAD finds no speech: the turn ends with the commit's answer."""
    report = await asyncio.wait_for(run_turn(stack.address, spoken=SpokenInput(bytes(16000 * 2), 16000), fast=True), 60)
    (error,) = report.errors
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION and "no speech was detected" in error.message


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
async def test_a_commit_after_vad_ended_the_speech_names_the_turn_it_became(stack):
    import soundfile

    wav = subprocess.run(["espeak-ng", "--stdout", "-s", "160", "What time is it?"], capture_output=True, check=True).stdout
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="int16")
    pcm = samples.tobytes() + bytes(int(1.2 * rate) * 2)
    async with Client(stack.address) as client:
        session_id = await client.create_session(max_reply_tokens=2, speech_output=False)
        conv = await client.converse(session_id, audio_rate=rate).open()
        try:
            step = rate * 40 // 1000 * 2
            for offset in range(0, len(pcm), step):
                await conv.send(audio=assistant_pb2.AudioAppend(data=pcm[offset : offset + step]))
            started = (await until(conv, lambda r: r.kind == "turn_started"))[-1].event.turn_id
            await conv.send(audio_commit=assistant_pb2.AudioCommit(turn_id="late"))
            events = await until(conv, lambda r: r.kind == "error")
        finally:
            conv.call.cancel()
    ((turn_id, code, message),) = errors(events)
    assert (turn_id, code) == ("late", FAILED_PRECONDITION) and f"is turn {started}" in message
