"""History after a cancel keeps what the user heard, on the real stack: from the client's playback position
when it reports one, else from the audio sent bounded by its real-time duration. And session settings
that the audio service would refuse are refused at CreateSession."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from services.orchestrator.pipeline import SpokenSegment
from services.orchestrator.played import heard_chars
from services.orchestrator.segmenter import Segmenter
from shared.grpc_server import channel_options
from vita.assistant.v1 import assistant_pb2, assistant_pb2_grpc

SAMPLE_RATE_HZ = 24000
PROMPT = "Tell me a long story."  # with seed 3, a reply of 300+ tokens: long enough to cancel mid-way


class Stream:
    """One Converse call, read event by event (the client's clock kept with each)."""

    def __init__(self, stub, session_id: str):
        self._stub = stub
        self._session_id = session_id
        self.events: list[tuple[float, assistant_pb2.ServerEvent]] = []

    async def __aenter__(self) -> "Stream":
        self.call = self._stub.Converse()
        await self.send(start=assistant_pb2.ConverseStart(session_id=self._session_id))
        await self.call.read()  # ready
        return self

    async def __aexit__(self, *exc) -> None:
        self.call.cancel()

    async def send(self, **event) -> None:
        await self.call.write(assistant_pb2.ClientEvent(**event))

    async def read_until(self, done) -> None:
        while not done():
            event = await asyncio.wait_for(self.call.read(), 60)
            assert event is not grpc.aio.EOF and not event.HasField("error"), event
            self.events.append((time.perf_counter(), event))
            assert not event.HasField("turn_completed"), "the reply ended before the test could cancel it"

    def of(self, kind: str) -> list[tuple[float, assistant_pb2.ServerEvent]]:
        return [(at, e) for at, e in self.events if e.WhichOneof("event") == kind]

    def audio_ms(self, segment_index: int | None = None) -> float:
        samples = sum(len(e.audio.pcm) // 2 for _, e in self.of("audio")
                      if segment_index is None or e.audio.segment_index == segment_index)
        return samples * 1000 / SAMPLE_RATE_HZ

    def last_segment(self) -> int:
        return max((e.audio.segment_index for _, e in self.of("audio")), default=-1)

    def deltas(self) -> list[str]:
        return [e.text_delta.text for _, e in self.of("text_delta")]

    async def completion(self) -> assistant_pb2.TurnCompleted:
        while True:
            event = await asyncio.wait_for(self.call.read(), 60)
            if event.HasField("turn_completed"):
                return event.turn_completed


def segments_heard(stream: Stream) -> list[SpokenSegment]:
    """The reply's speech segments as the server cut them (the cut depends only on the text), with the
    audio this client received for each."""
    segmenter = Segmenter(40, 5, 160)  # the orchestrator's defaults
    texts = segmenter.push("".join(stream.deltas())) + segmenter.flush()
    last = stream.last_segment()
    return [SpokenSegment(text, stream.audio_ms(i), done=i < last) for i, text in enumerate(texts)]


def whole_deltas(deltas: list[str], chars: int) -> str:
    kept = ""
    for piece in deltas:
        if len(kept) + len(piece) > chars:
            break
        kept += piece
    return kept


@pytest.fixture
async def assistant(stack):
    async with grpc.aio.insecure_channel(stack.address, options=channel_options(64 * 1024 * 1024)) as channel:
        yield assistant_pb2_grpc.AssistantStub(channel)


async def new_session(stub, **config) -> str:
    reply = await stub.CreateSession(assistant_pb2.CreateSessionRequest(config=assistant_pb2.SessionConfig(**config)))
    return reply.session.session_id


async def history(stub, session_id: str) -> list[assistant_pb2.HistoryTurn]:
    reply = await stub.GetSession(assistant_pb2.GetSessionRequest(session_id=session_id))
    return list(reply.session.history)


async def test_cancel_after_a_burst_of_audio_keeps_what_the_client_reports_it_played(assistant):
    session_id = await new_session(assistant, seed=3, max_reply_tokens=400)
    async with Stream(assistant, session_id) as stream:
        await stream.send(turn=assistant_pb2.UserTurn(text=PROMPT, turn_id="t-played"))
        # The client takes audio as fast as it comes (segments 0 and 1 whole) but has played segment 0 only.
        await stream.read_until(lambda: stream.last_segment() >= 2)
        played_ms = stream.audio_ms(0) + 1  # a hair into segment 1: not a word of it
        await stream.send(playback=assistant_pb2.PlaybackPosition(turn_id="t-played", played_ms=int(played_ms)))
        await stream.send(cancel=assistant_pb2.CancelTurn(turn_id="t-played"))
        completed = await stream.completion()
    delivered = "".join(stream.deltas())
    first = segments_heard(stream)[0].text
    expected = whole_deltas(stream.deltas(), delivered.find(first) + len(first))
    assert completed.outcome == assistant_pb2.TURN_OUTCOME_CANCELLED
    assert completed.reply_text == expected and first in expected
    assert len(expected) < len(delivered) and stream.audio_ms() > stream.audio_ms(0)  # far more was received
    turn = (await history(assistant, session_id))[-1]
    assert (turn.turn_id, turn.reply_text, turn.outcome) == ("t-played", expected, assistant_pb2.TURN_OUTCOME_CANCELLED)


async def test_without_playback_reports_the_played_part_is_bounded_by_real_time(assistant):
    session_id = await new_session(assistant, seed=3, max_reply_tokens=400)
    async with Stream(assistant, session_id) as stream:
        await stream.send(turn=assistant_pb2.UserTurn(text=PROMPT, turn_id="t-clock"))
        await stream.read_until(lambda: stream.last_segment() >= 2)
        first_audio_at = stream.of("audio")[0][0]
        await stream.send(cancel=assistant_pb2.CancelTurn(turn_id="t-clock"))
        elapsed_ms = (time.perf_counter() - first_audio_at) * 1000
        completed = await stream.completion()
    delivered, deltas, segments = "".join(stream.deltas()), stream.deltas(), segments_heard(stream)
    if stream.audio_ms() < elapsed_ms + 1000:
        pytest.skip(f"speech ran at about real time on this machine ({stream.audio_ms():.0f} ms in {elapsed_ms:.0f} ms)")
    # The server counts from when it sent the first chunk to when it read the cancel: the client's own
    # interval, give or take the transport's delays.
    margin_ms = 300
    at_most = whole_deltas(deltas, heard_chars(delivered, segments, elapsed_ms + margin_ms))
    at_least = whole_deltas(deltas, heard_chars(delivered, segments, max(0.0, elapsed_ms - margin_ms)))
    kept = completed.reply_text
    assert at_least.startswith(kept[: len(at_least)]) and len(at_least) <= len(kept) <= len(at_most)
    assert at_most.startswith(kept) and len(kept) < len(delivered)
    turn = (await history(assistant, session_id))[-1]
    assert (turn.reply_text, turn.outcome) == (kept, assistant_pb2.TURN_OUTCOME_CANCELLED)


@pytest.mark.parametrize(
    ("vad", "message"),
    [
        ({"max_utterance_ms": 500}, "vad.max_utterance_ms (500) must exceed vad.min_utterance_ms (1000)"),
        ({"min_utterance_ms": 0}, "vad.min_utterance_ms"),
    ],
)
async def test_vad_settings_the_audio_service_would_refuse_fail_at_create_session(assistant, vad, message):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await new_session(assistant, vad=vad)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in refused.value.details()
