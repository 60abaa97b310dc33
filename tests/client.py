"""A scripted client of the public API for tests: every event is kept with its arrival time."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc
from prometheus_client.parser import text_string_to_metric_families
import urllib.request

from shared.grpc_server import channel_options
from vita.assistant.v1 import assistant_pb2, assistant_pb2_grpc


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
        self._channel = grpc.aio.insecure_channel(address, options=channel_options(64 * 1024 * 1024))
        self.stub = assistant_pb2_grpc.AssistantStub(self._channel)
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def create_session(self, **config) -> str:
        reply = await self.stub.CreateSession(
            assistant_pb2.CreateSessionRequest(config=assistant_pb2.SessionConfig(**config)), metadata=self.metadata
        )
        return reply.session.session_id

    async def get_session(self, session_id: str) -> assistant_pb2.Session:
        reply = await self.stub.GetSession(assistant_pb2.GetSessionRequest(session_id=session_id), metadata=self.metadata)
        return reply.session

    def converse(self, session_id: str) -> "Conversation":
        return Conversation(self, session_id)


class Conversation:
    """One Converse stream. `async with client.converse(sid) as conv:`; `await conv.turn("hi")`."""

    def __init__(self, client: Client, session_id: str):
        self._client = client
        self.session_id = session_id
        self.call = None
        self.ready: assistant_pb2.Ready | None = None

    async def __aenter__(self) -> "Conversation":
        self.call = self._client.stub.Converse(metadata=self._client.metadata)
        await self.call.write(assistant_pb2.ClientEvent(start=assistant_pb2.ConverseStart(session_id=self.session_id)))
        first = await self.call.read()
        self.ready = first.ready
        return self

    async def __aexit__(self, *exc) -> None:
        self.call.cancel()

    async def send(self, **event) -> None:
        await self.call.write(assistant_pb2.ClientEvent(**event))

    async def read(self, timeout: float = 60.0) -> Received:
        event = await asyncio.wait_for(self.call.read(), timeout)
        if event is grpc.aio.EOF:
            raise EOFError("the server ended the stream")
        return Received(time.perf_counter(), event)

    async def collect_turn(self, timeout: float = 120.0) -> TurnEvents:
        """Events until the turn completes or fails."""
        turn = TurnEvents()
        while True:
            received = await self.read(timeout)
            turn.events.append(received)
            if received.kind in ("turn_completed", "error"):
                return turn

    async def turn(self, text: str, timeout: float = 120.0, **fields) -> TurnEvents:
        await self.send(turn=assistant_pb2.UserTurn(text=text, **fields))
        return await self.collect_turn(timeout)


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
