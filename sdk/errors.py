"""Exceptions the SDK raises. RPC refusals of session calls (NOT_FOUND, UNAUTHENTICATED, ...) arrive as
`grpc.aio.AioRpcError`, unchanged."""

from __future__ import annotations

import grpc


class TurnFailed(Exception):
    """The server refused or failed the turn (an `error` event for it)."""

    def __init__(self, code: grpc.StatusCode, message: str, partial, retry_after_ms: int = 0):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.partial = partial  # TurnResult: what arrived before the error
        self.retry_after_ms = retry_after_ms  # the server's hint for a retry; 0: none


class TurnInterruptedError(Exception):
    """The transport dropped (or the conversation closed) while the turn ran. The SDK reconnects by
    itself; the turn is not retried. `partial` holds what arrived."""

    def __init__(self, reason: str, partial):
        super().__init__(f"turn {partial.turn_id} interrupted: {reason}")
        self.reason = reason
        self.partial = partial


class ConversationClosed(Exception):
    """The stream is over for good (closed, refused, or the reconnect gave up)."""

    def __init__(self, code: grpc.StatusCode | None, details: str):
        super().__init__(f"{code.name}: {details}" if code is not None else details)
        self.code = code
        self.details = details
