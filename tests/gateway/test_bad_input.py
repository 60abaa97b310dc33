"""Bad input at the gateway: wrong keys, malformed or unknown events, base64 that does not decode,
oversized messages, bad chat requests. Each gets OpenAI's error shape (an `error` event or an HTTP 4xx);
only an oversized WebSocket message closes the connection, and the gateway serves on after all of them."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.gateway.conftest import png_data_url

KEY = "good-key"
LIMIT = 64 * 1024
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def keyed_gateway(stack):
    """An orchestrator that requires API keys, and a gateway in front of it with small message limits."""
    orchestrator = stack.spawn_orchestrator({"VITA_ORCH_API_KEYS": f"{KEY}=tenant-a"})
    try:
        gateway = stack.spawn_gateway(orchestrator.address, extra_env={
            "VITA_GATEWAY_MAX_EVENT_BYTES": str(LIMIT), "VITA_GATEWAY_MAX_REQUEST_BYTES": str(LIMIT)})
        yield gateway.address
        gateway.stop(10)
    finally:
        orchestrator.stop(15)


def http(address: str, path: str, body: bytes | None = None, key: str | None = KEY) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://{address}{path}", data=body, method="POST" if body is not None else "GET")
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def assert_openai_error(body: dict, code: str) -> None:
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["message"] and len(error["message"]) <= 500


async def recv_json(websocket) -> dict:
    return json.loads(await asyncio.wait_for(websocket.recv(), TIMEOUT_S))


async def next_of(websocket, kind: str) -> dict:
    while True:
        event = await recv_json(websocket)
        if event["type"] == kind:
            return event


async def test_a_wrong_or_missing_key_is_refused_at_the_handshake(keyed_gateway):
    url = f"ws://{keyed_gateway}/v1/realtime"
    for headers in ({"Authorization": "Bearer wrong"}, {}, {"Authorization": "Basic abc"}):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, additional_headers=headers):
                pass
        assert refused.value.response.status_code == 401
        assert_openai_error(json.loads(refused.value.response.body), "invalid_api_key")
    # A browser's form: the key as a subprotocol; the server picks "realtime", never echoing the key.
    async with connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"]) as websocket:
        assert websocket.subprotocol == "realtime"
        assert (await recv_json(websocket))["type"] == "session.created"
    status, body = await asyncio.to_thread(http, keyed_gateway, "/v1/chat/completions",
                                           json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(),
                                           "wrong")
    assert status == 401
    assert_openai_error(body, "invalid_api_key")


async def test_bad_events_get_error_events_and_the_connection_stays(keyed_gateway):
    cases = [
        ("{not json", "invalid_json"),
        (json.dumps([1, 2]), "invalid_event"),
        (json.dumps({"type": "no.such.event"}), "invalid_event_type"),
        (json.dumps({"type": "conversation.item.delete", "item_id": "x"}), "unsupported_event"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": "%%% not base64 %%%"}), "invalid_base64"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": 12}), "invalid_event"),
        (json.dumps({"type": "response.cancel"}), "response_cancel_not_active"),
        (json.dumps({"type": "response.create"}), "no_pending_input"),
        (json.dumps({"type": "session.update", "session": {"type": "realtime", "audio": {
            "input": {"format": {"type": "audio/pcmu"}}}}}), "unsupported_audio_format"),
        (json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
            {"type": "input_image", "image_url": "http://example.invalid/cat.png"}]}}), "remote_images_disabled"),
        (json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "assistant",
                                                                   "content": [{"type": "text", "text": "x"}]}}),
         "unsupported_item"),
        (b"\x00\x01binary", "invalid_event"),
    ]
    async with connect(f"ws://{keyed_gateway}/v1/realtime", additional_headers={"Authorization": f"Bearer {KEY}"}) as websocket:
        await next_of(websocket, "session.created")
        for message, code in cases:
            await websocket.send(message)
            error = await next_of(websocket, "error")
            assert error["error"]["code"] == code, (message, error)
            assert len(error["error"]["message"]) <= 500
        await websocket.send(json.dumps({"type": "session.update", "event_id": "e1",
                                         "session": {"type": "realtime", "output_modalities": ["text"]}}))
        updated = await next_of(websocket, "session.updated")
    assert updated["session"]["output_modalities"] == ["text"]


async def test_an_oversized_message_gets_an_error_and_closes_the_connection(keyed_gateway):
    big = json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(LIMIT)).decode()})
    headers = {"Authorization": f"Bearer {KEY}"}
    async with connect(f"ws://{keyed_gateway}/v1/realtime", additional_headers=headers) as websocket:
        await next_of(websocket, "session.created")
        await websocket.send(big)
        error = await next_of(websocket, "error")
        assert error["error"]["code"] == "message_too_large"
        with pytest.raises(ConnectionClosed):
            await recv_json(websocket)
    assert websocket.close_code == 1009
    # Beyond twice the limit the WebSocket layer itself cuts the connection (1009, no event).
    async with connect(f"ws://{keyed_gateway}/v1/realtime", additional_headers=headers, max_size=None) as websocket:
        await next_of(websocket, "session.created")
        await websocket.send("x" * (3 * LIMIT))
        with pytest.raises(ConnectionClosed):
            await recv_json(websocket)
    assert websocket.close_code == 1009


@pytest.mark.parametrize("body, status, code", [
    (b"{not json", 400, "invalid_json"),
    (json.dumps({"messages": []}).encode(), 400, None),
    (json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}).encode(), 400, None),
    (json.dumps({"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "@@not base64@@", "format": "wav"}}]}]}).encode(),
     400, "invalid_base64"),
    (json.dumps({"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"not a wav file").decode(), "format": "wav"}}]}]}).encode(),
     400, "invalid_audio"),
    (json.dumps({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}}]}]}).encode(),
     400, "remote_images_disabled"),
    (json.dumps({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!"}}]}]}).encode(), 400, "invalid_base64"),
    (json.dumps({"stream": True, "modalities": ["text", "audio"], "audio": {"format": "wav"},
                 "messages": [{"role": "user", "content": "hi"}]}).encode(), 400, "unsupported_value"),
    (json.dumps({"messages": [{"role": "user", "content": "x" * LIMIT}]}).encode(), 413, "request_too_large"),
])
async def test_bad_chat_requests_get_openai_errors(keyed_gateway, body, status, code):
    got, answer = await asyncio.to_thread(http, keyed_gateway, "/v1/chat/completions", body)
    assert got == status
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    if code is not None:
        assert answer["error"]["code"] == code


async def test_the_gateway_serves_on_after_bad_input(keyed_gateway):
    status, body = await asyncio.to_thread(http, keyed_gateway, "/v1/no-such-route")
    assert status == 404 and body["error"]["code"] == "not_found"
    assert await asyncio.to_thread(http, keyed_gateway, "/healthz", None, None) == (200, {"status": "ok"})
    with urllib.request.urlopen(f"http://{keyed_gateway}/metrics", timeout=TIMEOUT_S) as response:
        metrics = response.read().decode()
    assert "vita_gateway_realtime_errors_total" in metrics and "vita_gateway_http_requests_total" in metrics
    # A real turn still works, with an image part.
    body = json.dumps({"max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What colour is this?"}, {"type": "image_url", "image_url": {"url": png_data_url()}}]}]})
    status, completion = await asyncio.to_thread(http, keyed_gateway, "/v1/chat/completions", body.encode())
    assert status == 200 and completion["choices"][0]["message"]["content"]
