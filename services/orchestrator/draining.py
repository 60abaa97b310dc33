"""The orchestrator's part of an ordered shutdown: refuse new turns, let the running ones finish (their
history is written as they end), and end the streams once they are idle, so that the model services and
Redis can stop after it without failing a turn.

`shared.grpc_server.serve` calls `OrchestratorApp.drain` on SIGTERM, before it stops the gRPC server.
"""

from __future__ import annotations

import asyncio
import logging

from services.orchestrator.conversation import Conversation

log = logging.getLogger(__name__)

# Once the drain time is spent, a turn still running is cut (history keeps what was heard): recording
# it is one Redis write, given this long.
RECORD_GRACE_S = 3.0
SHUTTING_DOWN = "the server is shutting down; reconnect to continue this session"


class LiveConversations:
    """The Converse streams open on this orchestrator."""

    def __init__(self):
        self._open: set[Conversation] = set()

    def add(self, conversation: Conversation) -> None:
        self._open.add(conversation)

    def discard(self, conversation: Conversation) -> None:
        self._open.discard(conversation)

    def __len__(self) -> int:
        return len(self._open)

    async def drain(self, timeout_s: float) -> None:
        conversations = list(self._open)
        for conversation in conversations:
            conversation.stop_new_turns()
        running = [asyncio.ensure_future(c.wait_idle()) for c in conversations if c.turn_running]
        if running:
            log.info("draining: waiting up to %.1f s for %d running turn(s)", timeout_s, len(running))
            _, cut = await asyncio.wait(running, timeout=timeout_s)
        else:
            cut = set()
        # Each stream ends (UNAVAILABLE: clients reconnect elsewhere); a turn still running is cancelled by
        # its stream's end, and records what the user heard.
        for conversation in conversations:
            conversation.close()
        if cut:
            log.warning("draining: %d turn(s) still running after %.1f s are cut", len(cut), timeout_s)
            await asyncio.wait(cut, timeout=RECORD_GRACE_S)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
