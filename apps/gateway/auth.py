"""API keys at the gateway. The gateway holds no key list of its own: it passes the caller's key on to the
orchestrator, which accepts or refuses it, so the gRPC API's keys (VITA_ORCH_API_KEYS) are the gateway's.

Where the key comes from: `Authorization: Bearer <key>` (HTTP, and WebSocket clients that can set
headers), or, for browsers, which cannot set headers on a WebSocket, the subprotocol
`openai-insecure-api-key.<key>` as OpenAI's own browser clients send it."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from typing import AsyncIterator

import grpc

import sdk
from apps.gateway.errors import GatewayError

KEY_SUBPROTOCOL = "openai-insecure-api-key."
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
# The subprotocol the server selects when a browser offers it: a browser that offered protocols fails the
# handshake unless the server picks one of them. The key-bearing one is never echoed back.
REALTIME_SUBPROTOCOL = "realtime"
# Longer keys are refused before they reach the orchestrator (and never logged or echoed).
MAX_KEY_CHARS = 512


def key_from_headers(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise GatewayError("the Authorization header must be 'Bearer <key>'", status=401,
                           type="authentication_error", code="invalid_api_key")
    return _checked(token)


def key_from_subprotocols(protocols: list[str]) -> str | None:
    for protocol in protocols:
        if protocol.startswith(KEY_SUBPROTOCOL):
            return _checked(protocol[len(KEY_SUBPROTOCOL):])
    return None


def chosen_subprotocol(protocols: list[str]) -> str | None:
    return REALTIME_SUBPROTOCOL if REALTIME_SUBPROTOCOL in protocols else None


def _checked(key: str) -> str:
    if len(key) > MAX_KEY_CHARS or not key.isprintable():
        raise GatewayError("missing or unknown API key", status=401, type="authentication_error",
                           code="invalid_api_key")
    return key


class ClientPool:
    """One SDK client (one HTTP/2 connection to the orchestrator) per API key in use, shared by that key's
    requests and WebSockets. Idle clients beyond `max_clients` are closed, least recently used first."""

    def __init__(self, address: str, max_clients: int, credentials: grpc.ChannelCredentials | None = None,
                 keepalive: sdk.Keepalive = sdk.Keepalive()):
        self._address = address
        self._keepalive = keepalive
        self._max = max_clients
        self._credentials = credentials
        self._clients: OrderedDict[str | None, sdk.AsyncClient] = OrderedDict()
        self._users: dict[str | None, int] = {}
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def client(self, api_key: str | None) -> AsyncIterator[sdk.AsyncClient]:
        async with self._lock:
            client = self._clients.get(api_key)
            if client is None:
                client = self._clients[api_key] = sdk.AsyncClient(self._address, api_key=api_key,
                                                                  credentials=self._credentials,
                                                                  keepalive=self._keepalive)
            self._clients.move_to_end(api_key)
            self._users[api_key] = self._users.get(api_key, 0) + 1
        try:
            yield client
        finally:
            async with self._lock:
                self._users[api_key] -= 1
                await self._trim()

    async def forget(self, api_key: str | None) -> None:
        """A key the orchestrator refused: its client is closed once idle instead of kept."""
        async with self._lock:
            if self._users.get(api_key, 0) == 0 and api_key in self._clients:
                await self._clients.pop(api_key).close()
                self._users.pop(api_key, None)

    async def _trim(self) -> None:
        for key in list(self._clients):
            if len(self._clients) <= self._max:
                return
            if self._users.get(key, 0) == 0:
                await self._clients.pop(key).close()
                self._users.pop(key, None)

    async def close(self) -> None:
        async with self._lock:
            for client in self._clients.values():
                await client.close()
            self._clients.clear()
            self._users.clear()
