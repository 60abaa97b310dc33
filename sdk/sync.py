"""A blocking wrapper for code without an event loop: the async client runs on a private loop in a
background thread, and every call waits for its result."""

from __future__ import annotations

import asyncio
import threading
from typing import Iterator

from sdk.client import AsyncClient
from sdk.conversation import Conversation
from sdk.errors import ConversationClosed
from sdk.events import Event
from sdk.sessions import Session, SessionConfig
from sdk.turn import TurnResult


class _Loop:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="vita-sdk-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class Client:
    """`with Client("host:port") as client: conv = client.start(); print(conv.ask("Hi").text)`"""

    def __init__(self, address: str, **options):
        self._loop = _Loop()
        self._client = self._loop.run(_make_client(address, options))
        self._conversations: list[SyncConversation] = []

    def close(self) -> None:
        """Closes the conversations still open, then the channel and the loop."""
        for conversation in self._conversations:
            conversation.close()
        self._loop.run(self._client.close())
        self._loop.stop()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def create_session(self, config: SessionConfig | None = None) -> Session:
        return self._loop.run(self._client.create_session(config))

    def get_session(self, session_id: str) -> Session:
        return self._loop.run(self._client.get_session(session_id))

    def delete_session(self, session_id: str) -> None:
        self._loop.run(self._client.delete_session(session_id))

    def resume(self, session_id: str, **options) -> "SyncConversation":
        return self._keep(self._loop.run(self._client.resume(session_id, **options)))

    def start(self, config: SessionConfig | None = None, **options) -> "SyncConversation":
        return self._keep(self._loop.run(self._client.start(config, **options)))

    def _keep(self, conversation: Conversation) -> "SyncConversation":
        kept = SyncConversation(self._loop, conversation)
        self._conversations.append(kept)
        return kept


class SyncConversation:
    def __init__(self, loop: _Loop, conversation: Conversation):
        self._loop = loop
        self.conversation = conversation
        self.session_id = conversation.session_id

    def ask(self, text: str, **options) -> TurnResult:
        return self._loop.run(self.conversation.ask(text, **options))

    def append_audio(self, data: bytes) -> bool:
        return self._loop.run(self.conversation.append_audio(data))

    def commit_audio(self, **options) -> TurnResult:
        """Commits the audio and waits for the turn's result."""
        timeout = options.pop("timeout", None)
        turn = self._loop.run(self.conversation.commit_audio(**options))
        return self._loop.run(turn.result(timeout))

    def send_camera_frame(self, jpeg: bytes, timestamp_ms: int | None = None) -> bool:
        return self._loop.run(self.conversation.send_camera_frame(jpeg, timestamp_ms))

    def cancel(self, turn_id: str = "") -> None:
        self._loop.run(self.conversation.cancel(turn_id))

    def report_playback(self, turn_id: str, played_ms: int) -> bool:
        return self._loop.run(self.conversation.report_playback(turn_id, played_ms))

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Events not claimed by a turn (see Conversation.events); stops when the stream ends."""
        while True:
            try:
                event = self._loop.run(self.conversation.next_event(timeout))
            except ConversationClosed:
                return
            yield event

    def close(self) -> None:
        self._loop.run(self.conversation.close())

    def __enter__(self) -> "SyncConversation":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


async def _make_client(address: str, options: dict) -> AsyncClient:
    # grpc.aio binds a channel to the loop it is made on: make it on the private loop.
    return AsyncClient(address, **options)
