"""The async client of the public Assistant API: sessions, and conversations on them."""

from __future__ import annotations

import grpc

from sdk.channel import auth_metadata, open_channel
from sdk.conversation import Conversation
from sdk.media import AudioFormat
from sdk.reconnect import ReconnectPolicy
from sdk.sessions import Session, SessionConfig
from shared.keepalive import DEFAULT as DEFAULT_KEEPALIVE
from shared.keepalive import Keepalive
from vita.assistant.v1 import assistant_pb2 as pb
from vita.assistant.v1 import assistant_pb2_grpc

# Session calls are quick (a Redis round trip); a server that does not answer in this is down.
SESSION_CALL_TIMEOUT_S = 30.0


class AsyncClient:
    """One channel (HTTP/2 connection) to an orchestrator. `async with AsyncClient("host:port") as client:`"""

    def __init__(self, address: str, *, api_key: str | None = None, credentials: grpc.ChannelCredentials | None = None,
                 keepalive: Keepalive = DEFAULT_KEEPALIVE):
        """`keepalive`: only to match a server run with a non-default VITA_KEEPALIVE_TIME_MS."""
        self.address = address
        self._channel = open_channel(address, credentials, keepalive)
        self.stub = assistant_pb2_grpc.AssistantStub(self._channel)
        self.metadata = auth_metadata(api_key)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def create_session(self, config: SessionConfig | None = None) -> Session:
        request = pb.CreateSessionRequest(config=(config or SessionConfig()).to_proto())
        reply = await self.stub.CreateSession(request, metadata=self.metadata, timeout=SESSION_CALL_TIMEOUT_S)
        return Session.from_proto(reply.session)

    async def get_session(self, session_id: str) -> Session:
        request = pb.GetSessionRequest(session_id=session_id)
        reply = await self.stub.GetSession(request, metadata=self.metadata, timeout=SESSION_CALL_TIMEOUT_S)
        return Session.from_proto(reply.session)

    async def delete_session(self, session_id: str) -> None:
        request = pb.DeleteSessionRequest(session_id=session_id)
        await self.stub.DeleteSession(request, metadata=self.metadata, timeout=SESSION_CALL_TIMEOUT_S)

    def conversation(self, session_id: str, *, audio: AudioFormat | None = None,
                     reconnect: ReconnectPolicy | None = ReconnectPolicy(),
                     simulate_playback: bool = False) -> Conversation:
        """A conversation on an existing session, not yet open: `async with` it, or `await conv.open()`.

        `audio`: the format of the input audio this stream will append. `reconnect`: None ends the
        conversation at the first drop. `simulate_playback`: for a client that does not play the reply
        audio itself, report a real-time play position as if it did."""
        return Conversation(self.stub, self.metadata, session_id, audio=audio, reconnect=reconnect,
                            simulate_playback=simulate_playback)

    async def resume(self, session_id: str, **options) -> Conversation:
        """An open conversation on an existing session (history included)."""
        conversation = self.conversation(session_id, **options)
        await conversation.open()
        return conversation

    async def start(self, config: SessionConfig | None = None, **options) -> Conversation:
        """A new session and an open conversation on it."""
        session = await self.create_session(config)
        return await self.resume(session.session_id, **options)
