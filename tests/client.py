"""The tests' scripted client: a thin layer over the SDK that hands every event back as the raw protobuf
message with its arrival time, so tests assert on wire fields. Streams do not reconnect here: a test
sees a drop as the stream's end."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

import sdk
from vita.assistant.v1 import assistant_pb2

ENCODINGS = {assistant_pb2.AUDIO_ENCODING_PCM16: "pcm16", assistant_pb2.AUDIO_ENCODING_F32: "f32"}


@dataclass
class Received:
    at: float  # perf_counter seconds
    event: assistant_pb2.ServerEvent

    @property
    def kind(self) -> str:
        return self.event.WhichOneof("event")


@dataclass
class TurnEvents:
    events: list[Received] = field(default_factory=list)

    def of(self, kind: str) -> list[Received]:
        return [r for r in self.events if r.kind == kind]

    @property
    def text(self) -> str:
        return "".join(r.event.text_delta.text for r in self.of("text_delta"))

    @property
    def pcm(self) -> bytes:
        return b"".join(r.event.audio.pcm for r in self.of("audio"))

    @property
    def completed(self) -> assistant_pb2.TurnCompleted | None:
        done = self.of("turn_completed")
        return done[0].event.turn_completed if done else None

    @property
    def errors(self) -> list[assistant_pb2.Error]:
        return [r.event.error for r in self.of("error")]


class Client:
    def __init__(self, address: str, api_key: str | None = None):
        self.sdk = sdk.AsyncClient(address, api_key=api_key)
        self.stub = self.sdk.stub
        self.metadata = self.sdk.metadata

    async def close(self) -> None:
        await self.sdk.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def create_session(self, **config) -> str:
        vad = config.pop("vad", None)
        settings = sdk.SessionConfig(**config, vad=sdk.VoiceActivity(**vad) if vad is not None else None)
        return (await self.sdk.create_session(settings)).session_id

    async def get_session(self, session_id: str) -> assistant_pb2.Session:
        """The session as the wire has it (tests compare repeated fields with lists)."""
        request = assistant_pb2.GetSessionRequest(session_id=session_id)
        return (await self.stub.GetSession(request, metadata=self.metadata)).session

    def converse(self, session_id: str, *, audio_rate: int | None = None,
                 encoding: int = assistant_pb2.AUDIO_ENCODING_PCM16) -> "Conversation":
        audio = sdk.AudioFormat(audio_rate, ENCODINGS[encoding]) if audio_rate is not None else None
        return Conversation(self.sdk.conversation(session_id, audio=audio, reconnect=None))


class Conversation:
    """One Converse stream. `async with client.converse(sid) as conv:`; `await conv.turn("hi")`."""

    def __init__(self, conversation: sdk.Conversation):
        self.sdk = conversation
        self.session_id = conversation.session_id
        self.ready: sdk.Ready | None = None

    @property
    def call(self):
        return self.sdk.call

    async def open(self) -> "Conversation":
        self.ready = await self.sdk.open()
        return self

    async def close(self) -> None:
        await self.sdk.close()

    async def __aenter__(self) -> "Conversation":
        return await self.open()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def send(self, **event) -> None:
        await self.sdk.send_event(assistant_pb2.ClientEvent(**event))

    async def read(self, timeout: float = 60.0) -> Received:
        event = await self.sdk.next_event(timeout)
        if isinstance(event, sdk.StreamEnded):
            raise EOFError(f"the stream ended: {event.details}")
        return Received(event.received_at, event.raw)

    async def collect_turn(self, timeout: float = 120.0) -> TurnEvents:
        """Events until a turn completes or fails."""
        turn = TurnEvents()
        while True:
            received = await self.read(timeout)
            turn.events.append(received)
            if received.kind in ("turn_completed", "error"):
                return turn

    async def turn(self, text: str, timeout: float = 120.0, media=(), **fields) -> TurnEvents:
        """One typed turn through `ask`; an error event ends it like a completion."""
        try:
            result = await self.sdk.ask(text, media=[_sdk_media(m) for m in media], timeout=timeout, **fields)
        except sdk.TurnFailed as failed:
            result = failed.partial
        return TurnEvents([Received(e.received_at, e.raw) for e in result.events if e.raw is not None])


def _sdk_media(media: assistant_pb2.MediaInput) -> sdk.Media:
    if media.WhichOneof("kind") == "video":
        return sdk.Video(media.video)
    return sdk.Image(media.image, media.max_tiles)


def scrape(metrics_port: int) -> dict[tuple[str, tuple], float]:
    """A Prometheus endpoint as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
