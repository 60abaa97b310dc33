"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` for HTTP, and the same
object inside a Realtime `error` event. gRPC statuses from the orchestrator map onto HTTP statuses and
OpenAI error types here, in one place."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

# Longest message text the gateway puts in an error: input is never echoed unbounded.
MAX_MESSAGE_CHARS = 500


@dataclass
class GatewayError(Exception):
    """A request or event the gateway refuses, or a refusal from the orchestrator."""

    message: str
    status: int = 400
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    # The client event this answers (Realtime only).
    event_id: str | None = None

    def __post_init__(self):
        super().__init__(self.message)
        self.message = clip(self.message)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# gRPC status -> (HTTP status, OpenAI error type).
_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "invalid_request_error"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "server_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "server_error"),
    grpc.StatusCode.CANCELLED: (499, "server_error"),
}


def from_grpc(code: grpc.StatusCode | None, message: str) -> GatewayError:
    """The orchestrator's refusal as an OpenAI error; `code` is the gRPC status name in lower case, so a
    client can tell "resource_exhausted" (retry later) from "invalid_argument" (fix the request)."""
    status, kind = _BY_CODE.get(code, (500, "server_error"))
    name = code.name.lower() if code is not None else "internal"
    return GatewayError(message or name, status=status, type=kind, code=name)


def from_rpc_error(error: grpc.aio.AioRpcError) -> GatewayError:
    return from_grpc(error.code(), error.details() or "")


def unauthenticated() -> GatewayError:
    return GatewayError("missing or unknown API key (Authorization: Bearer <key>)", status=401,
                        type="authentication_error", code="invalid_api_key")


def orchestrator_unreachable(detail: str) -> GatewayError:
    return GatewayError(f"the orchestrator is unreachable: {detail}", status=503, type="server_error",
                        code="unavailable")
