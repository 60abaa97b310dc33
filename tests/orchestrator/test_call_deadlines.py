"""Deadlines and retries of the orchestrator's calls to the model services, against scripted gRPC
servers (real gRPC on loopback, a few lines of behaviour each): a stream that never answers, one that
stalls mid-reply, a replica that is down. The real services under SIGSTOP: tests/integration/test_deadlines.py."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from services.orchestrator.backends import (
    BackendError, CallIds, LLMDelta, LLMDone, TokenPiece, VadParameters, VoiceDropped, VoiceFormat,
)
from services.orchestrator.deadlines import CallDeadlines
from services.orchestrator.grpc_backends import GrpcAudio, GrpcLLM, GrpcSpeech
from services.orchestrator.replicas import Replicas, replica_addresses
from shared.channels import open_channel
from vita.audio.v1 import audio_pb2, audio_pb2_grpc
from vita.llm.v1 import llm_pb2, llm_pb2_grpc
from vita.speech.v1 import speech_pb2, speech_pb2_grpc

FAST = CallDeadlines(connect_s=1.0, call_s=1.0, encode_s=1.0, first_s=0.6, idle_s=0.6)
IDS = CallIds("s1", "t1")


class ScriptedLLM(llm_pb2_grpc.LLMServicer):
    """Sends `tokens` deltas, then a done, or hangs (`hang=True`) or fails with `abort`."""

    def __init__(self, tokens: int = 2, hang: bool = False, abort: grpc.StatusCode | None = None):
        self.tokens, self.hang, self.abort, self.calls = tokens, hang, abort, 0

    async def Generate(self, request, context):
        self.calls += 1
        for index in range(self.tokens):
            yield llm_pb2.GenerateResponse(delta=llm_pb2.TokenDelta(token_ids=[index], text="a"))
        if self.abort is not None:
            await context.abort(self.abort, "scripted failure")
        if self.hang:
            await asyncio.Event().wait()
        yield llm_pb2.GenerateResponse(done=llm_pb2.GenerateDone(generated_tokens=self.tokens))


class ScriptedSpeech(speech_pb2_grpc.SpeechServicer):
    """Answers every segment with one audio chunk and a segment_done, or hangs after the start."""

    def __init__(self, hang: bool = False):
        self.hang, self.calls, self.segments = hang, 0, []

    async def Synthesize(self, request_iterator, context):
        self.calls += 1
        async for message in request_iterator:
            if message.HasField("segment"):
                if self.hang:
                    await asyncio.Event().wait()
                self.segments.append(message.segment.text)
                index = message.segment.index
                yield speech_pb2.SynthesizeResponse(audio=speech_pb2.AudioChunk(pcm=b"\0\0" * 240, sample_rate_hz=24000,
                                                                                segment_index=index))
                yield speech_pb2.SynthesizeResponse(segment_done=speech_pb2.SegmentDone(segment_index=index))
        yield speech_pb2.SynthesizeResponse(done=speech_pb2.SynthesisDone())


async def serve(servicer, add) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    add(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def replicas(service: str, *addresses: str) -> Replicas:
    return Replicas.open(service, ",".join(addresses), lambda target: open_channel(target, 4 * 1024 * 1024))


async def generate(llm: GrpcLLM) -> tuple[list, BackendError | None]:
    items: list = []
    try:
        async for item in llm.generate(IDS, [TokenPiece((1, 2))], max_new_tokens=4, temperature=0.0, top_p=1.0):
            items.append(item)
    except BackendError as error:
        return items, error
    return items, None


def test_replica_addresses():
    assert replica_addresses("a:1") == ["a:1"]
    assert replica_addresses(" a:1, b:2 ") == ["a:1", "b:2"]
    assert replica_addresses("dns:///vita-llm:50061") == ["dns:///vita-llm:50061"]
    assert replica_addresses("ipv4:10.0.0.1:1,10.0.0.2:1") == ["ipv4:10.0.0.1:1,10.0.0.2:1"]


async def test_rendezvous_sends_a_session_to_the_same_replica():
    group = replicas("llm", "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3")
    try:
        picks = {group.ranked(f"session-{i}")[0].target for i in range(40)}
        assert len(picks) == 3  # spread over all
        assert all(group.ranked("s")[0] is group.ranked("s")[0] for _ in range(5))
        assert len(group.attempts("s")) == 2 and group.attempts("s")[0] is not group.attempts("s")[1]
    finally:
        for channel in group.channels:
            await channel.close()


async def test_llm_that_never_answers_fails_within_the_first_token_deadline():
    server, address = await serve(ScriptedLLM(tokens=0, hang=True), llm_pb2_grpc.add_LLMServicer_to_server)
    group = replicas("llm", address)
    try:
        started = time.monotonic()
        items, error = await generate(GrpcLLM(group, FAST))
        assert items == [] and error is not None
        assert error.code == "DEADLINE_EXCEEDED" and "llm service sent no first token within 0.6 s" in error.message
        assert time.monotonic() - started < 10
    finally:
        await group.channels[0].close()
        await server.stop(0)


async def two_llms() -> tuple[list[ScriptedLLM], list[grpc.aio.Server], Replicas]:
    """Two scripted LLM replicas, the session's first choice (rendezvous) first."""
    servicers = [ScriptedLLM(tokens=3), ScriptedLLM(tokens=3)]
    served = [await serve(s, llm_pb2_grpc.add_LLMServicer_to_server) for s in servicers]
    group = replicas("llm", *(address for _, address in served))
    by_address = {address: (servicer, server) for servicer, (server, address) in zip(servicers, served)}
    order = [by_address[replica.target] for replica in group.ranked(IDS.session_id)]
    return [servicer for servicer, _ in order], [server for _, server in order], group


async def close_all(servers: list[grpc.aio.Server], group: Replicas) -> None:
    for channel in group.channels:
        await channel.close()
    for server in servers:
        await server.stop(0)


async def test_llm_that_stalls_mid_reply_fails_after_what_it_sent_without_retry():
    (first, second), servers, group = await two_llms()
    first.tokens, first.hang = 2, True
    try:
        items, error = await generate(GrpcLLM(group, FAST))
        assert [type(i) for i in items] == [LLMDelta, LLMDelta]
        assert error is not None and error.code == "DEADLINE_EXCEEDED" and "stalled mid-reply" in error.message
        assert second.calls == 0  # output was delivered: a retry would repeat it
    finally:
        await close_all(servers, group)


@pytest.mark.parametrize("failure", ["hang", "unavailable", "exhausted", "down"])
async def test_llm_failure_before_output_is_retried_once_on_another_replica(failure):
    (first, second), servers, group = await two_llms()
    first.tokens = 0
    first.hang = failure == "hang"
    first.abort = {"unavailable": grpc.StatusCode.UNAVAILABLE, "exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED}.get(failure)
    if failure == "down":
        await servers[0].stop(0)
    try:
        items, error = await generate(GrpcLLM(group, FAST))
        assert error is None, error.message
        assert [type(i) for i in items] == [LLMDelta] * 3 + [LLMDone] and second.calls == 1
    finally:
        await close_all(servers, group)


async def test_without_replicas_a_failure_is_not_retried():
    (first, second), servers, group = await two_llms()
    first.tokens, first.abort = 0, grpc.StatusCode.UNAVAILABLE
    group.retry = False
    try:
        items, error = await generate(GrpcLLM(group, FAST))
        assert items == [] and error.code == "UNAVAILABLE" and "llm service is unavailable" in error.message
        assert first.calls == 1 and second.calls == 0
    finally:
        await close_all(servers, group)


async def test_speech_stream_moves_to_another_replica_before_any_audio_and_replays_its_segments():
    stuck, good = ScriptedSpeech(hang=True), ScriptedSpeech()
    servers = [await serve(s, speech_pb2_grpc.add_SpeechServicer_to_server) for s in (stuck, good)]
    group = replicas("speech", *(address for _, address in servers))
    try:
        speech = GrpcSpeech(group, FAST)
        # Least busy with rotation: open until a stream starts on the stuck replica.
        stream = await speech.open(IDS)
        while stream._attempts[0].target != servers[0][1]:
            stream.cancel()
            stream = await speech.open(IDS)
        await stream.push(0, "Hello there.")
        await stream.push(1, "Second part.")
        await stream.end()
        events = [event async for event in stream.events()]
        assert good.segments == ["Hello there.", "Second part."]
        assert len(events) == 5  # 2 × (audio, segment_done) + done
    finally:
        for channel in group.channels:
            await channel.close()
        for server, _ in servers:
            await server.stop(0)


async def test_speech_that_stalls_with_a_single_replica_fails_naming_the_stage():
    server, address = await serve(ScriptedSpeech(hang=True), speech_pb2_grpc.add_SpeechServicer_to_server)
    group = replicas("speech", address)
    try:
        stream = await GrpcSpeech(group, FAST).open(IDS)
        await stream.push(0, "Hello.")
        with pytest.raises(BackendError) as caught:
            async for _ in stream.events():
                pass
        assert caught.value.code == "DEADLINE_EXCEEDED"
        assert "speech service produced no audio for a text segment within 0.6 s" in caught.value.message
    finally:
        await group.channels[0].close()
        await server.stop(0)


async def test_an_idle_speech_stream_that_owes_nothing_is_not_timed_out():
    server, address = await serve(ScriptedSpeech(), speech_pb2_grpc.add_SpeechServicer_to_server)
    group = replicas("speech", address)
    try:
        stream = await GrpcSpeech(group, FAST).open(IDS)
        reader = asyncio.ensure_future(stream.__class__.events(stream).__anext__())
        await asyncio.sleep(1.5)  # well past both deadlines: the LLM has not produced a segment yet
        assert not reader.done()
        await stream.push(0, "Late text.")
        event = await asyncio.wait_for(reader, 10)
        assert event.segment_index == 0
        stream.cancel()
    finally:
        await group.channels[0].close()
        await server.stop(0)


class ScriptedAudio(audio_pb2_grpc.AudioServicer):
    """Takes audio and commits; answers a commit with a drop unless `silent`."""

    def __init__(self, silent: bool):
        self.silent = silent

    async def StreamAudio(self, request_iterator, context):
        async for message in request_iterator:
            if message.HasField("commit") and not self.silent:
                yield audio_pb2.AudioOutput(dropped=audio_pb2.UtteranceDropped(duration_ms=0))


@pytest.mark.parametrize("silent", [False, True])
async def test_an_audio_commit_is_answered_within_the_deadline_or_fails(silent):
    server, address = await serve(ScriptedAudio(silent), audio_pb2_grpc.add_AudioServicer_to_server)
    group = replicas("audio", address)
    vad = VadParameters(enabled=False, start_threshold=0.5, end_threshold=0.35, min_silence_ms=500,
                        pre_roll_ms=300, min_utterance_ms=200, max_utterance_ms=30000)
    try:
        stream = await GrpcAudio(group, FAST).open_stream(IDS, VoiceFormat(16000, "pcm16"), vad)
        events = stream.events()
        idle = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(1.5)  # no commit yet: nothing is owed, an idle stream is not timed out
        assert not idle.done()
        await stream.send(b"\0\0" * 1600)
        await stream.commit()
        if silent:
            with pytest.raises(BackendError) as late:
                await asyncio.wait_for(idle, 10)
            assert late.value.code == "DEADLINE_EXCEEDED"
            assert "audio service did not answer the audio commit within 0.6 s" in late.value.message
        else:
            assert isinstance(await asyncio.wait_for(idle, 10), VoiceDropped)
        stream.close()
        await events.aclose()
    finally:
        await group.channels[0].close()
        await server.stop(0)


async def test_a_speech_stream_that_cannot_open_anywhere_holds_no_replica():
    group = replicas("speech", "127.0.0.1:1", "127.0.0.1:2")  # nothing listens
    try:
        with pytest.raises(BackendError) as failed:
            await GrpcSpeech(group, FAST).open(IDS)
        assert failed.value.code == "UNAVAILABLE" and "speech service is unavailable" in failed.value.message
        assert [replica.in_flight for replica in group.replicas] == [0, 0]
    finally:
        for channel in group.channels:
            await channel.close()


async def test_release_session_reaches_every_replica_and_ignores_a_dead_one():
    class Releasing(ScriptedLLM):
        def __init__(self):
            super().__init__()
            self.released: list[str] = []

        async def ReleaseSession(self, request, context):
            self.released.append(request.ctx.session_id)
            return llm_pb2.ReleaseSessionResponse()

    alive = Releasing()
    server, address = await serve(alive, llm_pb2_grpc.add_LLMServicer_to_server)
    group = replicas("llm", address, "127.0.0.1:1")
    try:
        await asyncio.wait_for(GrpcLLM(group, FAST).release_session("s9"), 10)
        assert alive.released == ["s9"]
    finally:
        await close_all([server], group)
