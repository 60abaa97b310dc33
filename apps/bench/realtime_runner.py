"""Time to first audio through the gateway's Realtime WebSocket against the gRPC API, in the same run.

    python -m apps.bench.realtime_runner --turns 20 --reply-tokens 16

Starts the tiny stack with its gateway here (or uses --address and --gateway of a running one), opens
one session per path and sends the same typed prompts, greedy (temperature 0), alternating the two paths
turn by turn so that drift on the machine hits both alike. TTFA is measured on this client: the first
byte of the user's input sent (the gRPC UserTurn; the WebSocket's conversation.item.create, followed at
once by response.create) to the first reply audio received (an AudioChunk; a response.output_audio.delta).
Both clients run in this process, so the WebSocket path's extra cost is the gateway hop (JSON, base64,
one more process) and nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import sdk

PROMPTS = (
    "Hello! Who are you?", "What is the capital of France?", "Tell me a joke.", "How do planes fly?",
    "Name three colours.", "What is two plus two?", "Describe the sea.", "Why is the sky blue?",
)


async def grpc_turns(address: str, api_key: str | None, reply_tokens: int):
    """Opens a session; returns (turn(prompt) -> TTFA ms, close)."""
    client = sdk.AsyncClient(address, api_key=api_key)
    conv = await client.start(sdk.SessionConfig(max_reply_tokens=reply_tokens, temperature=0.0, speech_output=True))

    async def turn(prompt: str) -> float:
        started = time.perf_counter()
        handle = await conv.send_text(prompt, max_reply_tokens=reply_tokens)
        first = None
        async for event in handle.events():
            if first is None and isinstance(event, sdk.AudioChunk):
                first = event.received_at
        await handle.result()
        if first is None:
            raise RuntimeError("a gRPC turn ended without audio")
        return (first - started) * 1000.0

    async def close() -> None:
        session_id = conv.session_id
        await conv.close()
        await client.delete_session(session_id)
        await client.close()

    return turn, close


async def realtime_turns(gateway: str, api_key: str | None, reply_tokens: int):
    from websockets.asyncio.client import connect

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    websocket = await connect(f"ws://{gateway}/v1/realtime", additional_headers=headers, max_size=None)

    async def next_of(kind: str) -> dict:
        while True:
            event = json.loads(await websocket.recv())
            if event["type"] == "error":
                raise RuntimeError(f"the gateway answered an error: {event['error']}")
            if event["type"] == kind:
                return event

    await next_of("session.created")
    await websocket.send(json.dumps({"type": "session.update", "session": {
        "type": "realtime", "output_modalities": ["audio"], "temperature": 0.0, "max_output_tokens": reply_tokens,
        "audio": {"input": {"turn_detection": None}}}}))
    await next_of("session.updated")

    async def turn(prompt: str) -> float:
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": prompt}]}
        started = time.perf_counter()
        await websocket.send(json.dumps({"type": "conversation.item.create", "item": item}))
        await websocket.send(json.dumps({"type": "response.create"}))
        await next_of("response.output_audio.delta")
        first = time.perf_counter()
        done = await next_of("response.done")
        if done["response"]["status"] != "completed":
            raise RuntimeError(f"a Realtime response ended {done['response']['status']}")
        return (first - started) * 1000.0

    return turn, websocket.close


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"n": len(values), "median_ms": round(statistics.median(values), 1),
            "mean_ms": round(statistics.fmean(values), 1),
            "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 1)}


async def measure(address: str, gateway: str, api_key: str | None, turns: int, warmup: int, reply_tokens: int) -> dict:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(warmup + turns)]
    grpc_turn, grpc_close = await grpc_turns(address, api_key, reply_tokens)
    ws_turn, ws_close = await realtime_turns(gateway, api_key, reply_tokens)
    ttfa: dict[str, list[float]] = {"grpc": [], "realtime": []}
    try:
        for index, prompt in enumerate(prompts):
            # Alternate which path goes first, so neither always follows the other's turn.
            order = [("grpc", grpc_turn), ("realtime", ws_turn)]
            for name, turn in order if index % 2 == 0 else reversed(order):
                value = await turn(prompt)
                if index >= warmup:
                    ttfa[name].append(value)
    finally:
        await grpc_close()
        await ws_close()
    result = {name: summary(values) for name, values in ttfa.items()}
    # Paired by prompt: the same turn through each door, so load that hits one turn hits both numbers less.
    differences = [ws - grpc for grpc, ws in zip(ttfa["grpc"], ttfa["realtime"])]
    result["paired_median_difference_ms"] = round(statistics.median(differences), 1)
    result["per_turn_ms"] = {name: [round(value, 1) for value in values] for name, values in ttfa.items()}
    result["ratio_median"] = round(result["realtime"]["median_ms"] / result["grpc"]["median_ms"], 3)
    result["ratio_mean"] = round(result["realtime"]["mean_ms"] / result["grpc"]["mean_ms"], 3)
    result["turns"], result["warmup"], result["reply_tokens"] = turns, warmup, reply_tokens
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m apps.bench.realtime_runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default=None, help="Assistant API of a running stack (with --gateway)")
    parser.add_argument("--gateway", default=None, help="host:port of that stack's gateway")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--turns", type=int, default=20, help="measured turns per path")
    parser.add_argument("--warmup", type=int, default=2, help="turns per path run first and not measured")
    parser.add_argument("--reply-tokens", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    if (args.address is None) != (args.gateway is None):
        parser.error("--address and --gateway go together")
    if args.address is not None:
        result = asyncio.run(measure(args.address, args.gateway, args.api_key, args.turns, args.warmup, args.reply_tokens))
    else:
        from apps.launcher import Stack, StackConfig

        log_dir = Path(tempfile.mkdtemp(prefix="vita-realtime-bench-"))
        print(f"starting the tiny stack with its gateway (logs in {log_dir})...", file=sys.stderr, flush=True)
        with Stack(StackConfig(log_dir=log_dir, gateway=True)) as stack:
            result = asyncio.run(measure(stack.address, stack.gateway.address, args.api_key, args.turns, args.warmup,
                                         args.reply_tokens))
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
