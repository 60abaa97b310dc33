"""`/v1/realtime`: the WebSocket handshake (API key, dialect, the vita session behind it) and the read loop.

What ends a connection and what does not:
- refused at the handshake, as an HTTP error with OpenAI's error body: a missing or unknown API key (401),
  an unknown `session_id` to resume (404), the orchestrator unreachable (503);
- an `error` event, connection kept: malformed JSON, an unknown or unsupported event type, a field of the
  wrong type, base64 that does not decode, a binary frame, a refusal of the orchestrator (a turn it
  refuses, a bad image);
- an `error` event, then the connection closed: a message over VITA_GATEWAY_MAX_EVENT_BYTES (close code
  1009), the vita conversation ended for good (the orchestrator gone past the SDK's reconnect; 1011).
  Messages over twice that limit are cut off by the WebSocket layer itself (1009, no event).
"""

from __future__ import annotations

import asyncio
import json
import logging

import grpc
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

import sdk
from apps.gateway import realtime_protocol as rp
from apps.gateway.auth import chosen_subprotocol, key_from_headers, key_from_subprotocols
from apps.gateway.errors import GatewayError, from_rpc_error, unauthenticated
from apps.gateway.realtime_session import RealtimeSession
from apps.gateway.state import GatewayState

log = logging.getLogger(__name__)

CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011


async def realtime(websocket: WebSocket) -> None:
    state: GatewayState = websocket.app.state.gateway
    protocols = list(websocket.scope.get("subprotocols") or [])
    try:
        api_key = key_from_headers(websocket.headers.get("authorization")) or key_from_subprotocols(protocols)
    except GatewayError as error:
        return await _deny(websocket, error)
    dialect, decided = rp.detect_dialect(websocket.headers.get("openai-beta"), protocols)
    resume = websocket.query_params.get("session_id") or None
    async with state.pool.client(api_key) as client:
        lock = asyncio.Lock()

        async def send(event: dict) -> None:
            async with lock:
                try:
                    await websocket.send_text(json.dumps(event, separators=(",", ":")))
                except WebSocketDisconnect:
                    raise ConnectionError("the client closed the WebSocket") from None

        session = RealtimeSession(client, send, dialect, decided, state.settings, state.metrics, resume)
        try:
            await session.open()
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                await state.pool.forget(api_key)
                return await _deny(websocket, unauthenticated())
            return await _deny(websocket, from_rpc_error(error))
        state.metrics.realtime_connections.inc()
        try:
            await websocket.accept(subprotocol=chosen_subprotocol(protocols))
            await session.start()
            await _serve(websocket, session, state)
        except (WebSocketDisconnect, ConnectionError):
            pass
        finally:
            state.metrics.realtime_connections.dec()
            await session.close()
            if websocket.application_state != WebSocketState.DISCONNECTED:
                try:
                    await websocket.close()
                except (RuntimeError, ConnectionError, WebSocketDisconnect):
                    pass  # the client is gone already


async def _serve(websocket: WebSocket, session: RealtimeSession, state: GatewayState) -> None:
    reader = asyncio.create_task(_read_loop(websocket, session, state), name="gateway-realtime-reader")
    ended = asyncio.create_task(session.ended.wait(), name="gateway-realtime-ended")
    try:
        await asyncio.wait({reader, ended}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (reader, ended):
            task.cancel()
        await asyncio.gather(reader, ended, return_exceptions=True)
    if reader.done() and not reader.cancelled() and reader.exception() is not None:
        raise reader.exception()
    if session.ended.is_set() and websocket.application_state == WebSocketState.CONNECTED:
        await websocket.close(code=CLOSE_INTERNAL, reason="the conversation ended")


async def _read_loop(websocket: WebSocket, session: RealtimeSession, state: GatewayState) -> None:
    limit = state.settings.max_event_bytes
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None:
            await session.emit_error(GatewayError("binary frames are not events: send JSON text frames",
                                                  code="invalid_event"))
            continue
        if len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit:
            await session.emit_error(GatewayError(f"the message is larger than {limit} bytes; send audio in "
                                                  "smaller appends", code="message_too_large"))
            await websocket.close(code=CLOSE_TOO_BIG, reason="message too large")
            return
        try:
            event = rp.parse_client_event(text)
            state.metrics.realtime_events.labels(event.type).inc()
            await session.handle(event)
        except GatewayError as error:
            await session.emit_error(error)
        except grpc.aio.AioRpcError as error:  # a session call the orchestrator refused
            await session.emit_error(from_rpc_error(error))
        except sdk.ConversationClosed as error:
            await session.emit_error(GatewayError(f"the conversation is closed: {error.details}", status=503,
                                                  type="server_error", code="unavailable"))
            await websocket.close(code=CLOSE_INTERNAL, reason="the conversation ended")
            return


async def _deny(websocket: WebSocket, error: GatewayError) -> None:
    """Refuses the handshake with an HTTP error carrying OpenAI's error body (where the server supports
    it; otherwise a plain 403 close)."""
    try:
        await websocket.send_denial_response(JSONResponse(error.body(), status_code=error.status))
    except RuntimeError:
        await websocket.close(code=1008)
