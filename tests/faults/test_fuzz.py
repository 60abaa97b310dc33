"""Property-based fuzzing of the public API (hypothesis) against the real stack: random sequences of client
events with random field values (text with chat control tokens, text that is not UTF-8, bytes that do not
parse, random audio in random formats, random ids, media bytes, cancels, commits, camera frames), and
random unary requests. Whatever a client sends, it gets only documented status codes, never INTERNAL or
UNKNOWN, no status message echoes its input unbounded, and every service is still SERVING afterwards.

Bounded for CI: a fixed number of examples, derandomized (the same examples every run), each with short
replies. The run prints how many examples it made. For a longer hunt, VITA_FUZZ_EXAMPLES=500 runs more,
with fresh random examples."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.launcher import check_serving
from vita.assistant.v1 import assistant_pb2 as pb
from vita.assistant.v1 import assistant_pb2_grpc

MAX_EXAMPLES = 60
EXAMPLE_TIMEOUT_S = 60.0
CONVERSE = "/vita.assistant.v1.Assistant/Converse"
# Never a client's answer: these mean the server failed.
SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
ERROR_EVENT_FAULTS = {grpc.StatusCode.INTERNAL.value[0], grpc.StatusCode.UNKNOWN.value[0]}
# A status message or error event is a sentence about the input, never the input.
MESSAGE_BOUND = 600

CONTROL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "☞", "☟", "☜", "<image>", "<video>", "<audio>",
                  "system\n", "\x00", "\ufeff"]

# ----- strategies ---------------------------------------------------------------------------------

texts = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(st.sampled_from(CONTROL_TOKENS), st.text(max_size=8)), max_size=6).map("".join),
    st.just(""),
    st.just("   \n\t"),
)
valid_ids = st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)
ids = st.one_of(
    st.just(""),
    valid_ids, valid_ids, valid_ids,
    st.text(max_size=20),
    st.integers(129, 20_000).map(lambda n: "x" * n),
)
tiny_png = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8cfc000000301010018dd8db00000000049454e44ae426082"
)
media = st.builds(
    lambda kind, data, tiles: pb.MediaInput(**{kind: data}, max_tiles=tiles),
    st.sampled_from(["image", "video"]),
    st.one_of(st.binary(max_size=64), st.just(tiny_png), st.just(b"")),
    st.sampled_from([0, 0, 1, 2, 13, -1]),
)
reply_tokens = st.sampled_from([None] * 6 + [1, 2, 0, -3, 5000])


def _user_turn(turn_id, text, items, seed, max_reply):
    turn = pb.UserTurn(turn_id=turn_id, text=text, media=items)
    if seed is not None:
        turn.seed = seed
    if max_reply is not None:
        turn.max_reply_tokens = max_reply
    return pb.ClientEvent(turn=turn).SerializeToString()


def _bad_utf8_turn(turn_id: bytes) -> bytes:
    inner = b"\x0a" + bytes([len(turn_id)]) + turn_id + b"\x12\x03h\xff\xfe"
    return b"\x12" + bytes([len(inner)]) + inner


def _event(**kind) -> bytes:
    return pb.ClientEvent(**kind).SerializeToString()


# Well-formed turns and voice, so that examples also run turns to their end (and cancels and commits
# meet running turns), among the malformed events.
well_formed = st.one_of(
    st.builds(_user_turn, st.one_of(st.just(""), valid_ids), st.one_of(st.text(min_size=1, max_size=30), texts),
              st.just([]), st.none(), st.sampled_from([None, 1, 2])),
    st.builds(lambda seconds, seed: _event(audio=pb.AudioAppend(data=_noise(seconds, seed))),
              st.sampled_from([0.1, 0.3]), st.integers(0, 9)),
    st.builds(lambda turn_id: _event(audio_commit=pb.AudioCommit(turn_id=turn_id)), valid_ids),
    st.builds(lambda turn_id: _event(cancel=pb.CancelTurn(turn_id=turn_id)), st.just("")),
)
client_events = st.one_of(
    well_formed, well_formed, well_formed,
    st.builds(_user_turn, ids, texts, st.one_of(st.just([]), st.just([]), st.lists(media, max_size=2)), st.one_of(st.none(), st.integers(0, 2**64 - 1)),
              reply_tokens),
    st.builds(lambda data: _event(audio=pb.AudioAppend(data=data)), st.binary(max_size=4000)),
    st.builds(lambda seconds, seed: _event(audio=pb.AudioAppend(data=_noise(seconds, seed))),
              st.sampled_from([0.02, 0.1, 0.3]), st.integers(0, 9)),
    st.builds(lambda turn_id, items: _event(audio_commit=pb.AudioCommit(turn_id=turn_id, media=items)),
              ids, st.lists(media, max_size=1)),
    st.builds(lambda ts, jpeg: _event(camera_frame=pb.CameraFrame(timestamp_ms=ts, jpeg=jpeg)),
              st.integers(-(2**63), 2**63 - 1), st.binary(max_size=64)),
    st.builds(lambda turn_id: _event(cancel=pb.CancelTurn(turn_id=turn_id)), ids),
    st.builds(lambda turn_id, ms: _event(playback=pb.PlaybackPosition(turn_id=turn_id, played_ms=ms)),
              ids, st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda session_id: _event(start=pb.ConverseStart(session_id=session_id)), ids),
    st.just(b""),  # an empty ClientEvent
    st.binary(min_size=1, max_size=32),  # bytes that rarely parse
    st.builds(_bad_utf8_turn, st.sampled_from([b"u8", b""])),
)

configs = st.builds(
    lambda vad, speech, reply: {"vad": vad, "speech_output": speech, "max_reply_tokens": reply},
    st.booleans(), st.booleans(), st.integers(1, 3),
)
starts = st.builds(
    dict,
    session=st.sampled_from(["own"] * 8 + ["missing", "random"]),
    random_id=ids,
    rate=st.sampled_from([0, 8000, 16000, 22050, 48000, 1, -16000, 10_000_000]),
    encoding=st.sampled_from([0, 1, 1, 1, 2, 2, 2, 3, -1]),
)
unary_calls = st.one_of(
    st.builds(lambda i: ("GetSession", pb.GetSessionRequest(session_id=i)), ids),
    st.builds(lambda i: ("DeleteSession", pb.DeleteSessionRequest(session_id=i)), ids),
    st.builds(lambda tokens, temp, tiles, hist, ms: ("CreateSession", pb.CreateSessionRequest(config=pb.SessionConfig(
        max_reply_tokens=tokens, temperature=temp, max_image_tiles=tiles, max_history_turns=hist,
        vad=pb.VoiceActivityConfig(min_silence_ms=ms, start_threshold=temp)))),
        st.integers(-5, 10_000), st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-2, 20),
        st.integers(-2, 100), st.integers(-(2**31), 2**31 - 1)),
)


def _noise(seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * 16000)) * 0.1 * 32767).astype("<i2").tobytes()


# ----- one example -----------------------------------------------------------------------------------


class Findings:
    def __init__(self):
        self.examples = 0
        self.statuses: dict[str, int] = {}
        self.error_codes: dict[int, int] = {}
        self.events: dict[str, int] = {}

    def status(self, code: grpc.StatusCode, details: str, where: str) -> None:
        self.statuses[code.name] = self.statuses.get(code.name, 0) + 1
        assert code not in SERVER_FAULTS, f"{where} ended with {code.name}: {details}"
        assert len(details or "") < MESSAGE_BOUND, f"{where}: a {len(details)}-character status message"


async def _converse(channel, stub, config, start, events, findings: Findings) -> None:
    created = await stub.CreateSession(pb.CreateSessionRequest(config=pb.SessionConfig(
        max_reply_tokens=config["max_reply_tokens"], speech_output=config["speech_output"],
        vad=pb.VoiceActivityConfig(enabled=config["vad"]),
    )))
    session_id = {"own": created.session.session_id, "missing": "0" * 32, "random": start["random_id"]}[start["session"]]
    first = _event(start=pb.ConverseStart(session_id=session_id, input_sample_rate_hz=start["rate"],
                                          input_encoding=start["encoding"]))
    call = channel.stream_stream(CONVERSE, request_serializer=None, response_deserializer=pb.ServerEvent.FromString)()

    async def write() -> None:
        try:
            for message in events:
                await call.write(message)
            await call.done_writing()
        except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
            pass  # the server ended the call: its status is read below

    # The rest is written once `ready` is read: a write racing a refused start would fail on the client
    # side as INTERNAL ("Internal error from Core") and hide the server's status.
    writer = None
    try:
        await call.write(first)
        async for event in call:
            if writer is None:
                writer = asyncio.create_task(write())
            kind = event.WhichOneof("event")
            findings.events[kind] = findings.events.get(kind, 0) + 1
            if kind == "error":
                error = event.error
                findings.error_codes[error.code] = findings.error_codes.get(error.code, 0) + 1
                assert error.code not in ERROR_EVENT_FAULTS, f"error event {error.code}: {error.message}"
                assert len(error.message) < MESSAGE_BOUND and len(event.turn_id) <= 128
    except grpc.aio.AioRpcError as error:
        findings.status(error.code(), error.details(), "Converse")
    else:
        findings.status(await call.code(), await call.details(), "Converse")
    finally:
        if writer is not None:
            writer.cancel()
        call.cancel()
    await stub.DeleteSession(pb.DeleteSessionRequest(session_id=created.session.session_id))


async def _unary(stub, calls, findings: Findings) -> None:
    for name, request in calls:
        try:
            reply = await getattr(stub, name)(request)
        except grpc.aio.AioRpcError as error:
            findings.status(error.code(), error.details(), name)
            continue
        if name == "CreateSession":
            await stub.DeleteSession(pb.DeleteSessionRequest(session_id=reply.session.session_id))


class LoopThread:
    """One event loop in a thread of its own for the whole run: hypothesis drives examples synchronously,
    and the gRPC channel lives in this loop across them."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro, timeout: float):
        return asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, timeout), self.loop).result()

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def driver(stack):
    loop = LoopThread()

    async def open_channel():
        return grpc.aio.insecure_channel(stack.address)

    channel = loop.run(open_channel(), 10)
    try:
        yield loop, channel
    finally:
        loop.run(channel.close(), 10)
        loop.close()


def test_random_client_input_gets_only_documented_statuses(stack, driver):
    loop, channel = driver
    stub = assistant_pb2_grpc.AssistantStub(channel)
    findings = Findings()
    hunt = int(os.environ.get("VITA_FUZZ_EXAMPLES", "0"))

    @settings(max_examples=hunt or MAX_EXAMPLES, deadline=None, derandomize=not hunt, database=None,
              suppress_health_check=list(HealthCheck))
    @given(config=configs, start=starts, events=st.lists(client_events, max_size=8),
           calls=st.lists(unary_calls, max_size=3))
    def example(config, start, events, calls):
        findings.examples += 1
        loop.run(_converse(channel, stub, config, start, events, findings), EXAMPLE_TIMEOUT_S)
        loop.run(_unary(stub, calls, findings), EXAMPLE_TIMEOUT_S)

    started = time.monotonic()
    example()
    print(f"\nfuzz: {findings.examples} examples in {time.monotonic() - started:.1f} s; stream statuses {findings.statuses}; "
          f"error events by code {findings.error_codes}; events {findings.events}")
    assert findings.examples >= MAX_EXAMPLES // 2
    for service in [*stack.services.values(), stack.orchestrator]:
        check_serving(service.address, 30.0)
