"""One load-generating process (`python -m apps.capacity.load`): N simulated voice users on raw gRPC
stubs (no SDK layers, so that one process drives hundreds of sessions without becoming the bottleneck).

Protocol with the harness (apps/capacity/run.py): the plan arrives as one JSON line on stdin; the
process opens its sessions and prints `READY`; the harness answers `GO <start> <end>` (unix times of the
measured window); the process runs turns until `end`, lets the running turns finish, and prints
`RESULT <json>`.

A user sends a text turn, listens to the whole spoken reply (real-time playback from its first audio), then
speaks for `user_speaks_s` (the time a spoken question takes), and sends the next turn: the turn rate of a
real voice conversation, set by the reply's audio length. Its first turn starts at a random point of one
cycle, so that turns do not arrive in lockstep.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field

import grpc

from sdk.channel import open_channel
from vita.assistant.v1 import assistant_pb2, assistant_pb2_grpc

USER_TEXT = "Tell me something about the sea, in a few short sentences."
# How often the loop-lag probe wakes: its lateness shows whether this process keeps up.
LAG_PROBE_S = 0.05
# Turns still running at the window's end get this long to finish before the process gives up on them.
FINISH_GRACE_S = 60.0


@dataclass(frozen=True)
class Plan:
    address: str
    sessions: int
    seed: int
    sessions_per_channel: int
    max_reply_tokens: int
    user_speaks_s: float
    # The fakes' configured latency: what a turn costs without any orchestrator.
    llm_first_token_ms: float
    llm_prefill_ms_per_token: float
    llm_decode_tokens_per_s: float
    speech_first_chunk_ms: float
    first_segment_tokens: int
    open_concurrency: int = 50
    speech_output: bool = True

    def expected_ttft_ms(self, prefilled_tokens: int) -> float:
        return self.llm_first_token_ms + self.llm_prefill_ms_per_token * prefilled_tokens

    def expected_ttfa_ms(self, prefilled_tokens: int) -> float:
        # The first segment closes with token `first_segment_tokens`; its first chunk follows.
        step_ms = 1000.0 / self.llm_decode_tokens_per_s
        return (self.expected_ttft_ms(prefilled_tokens) + (self.first_segment_tokens - 1) * step_ms
                + self.speech_first_chunk_ms)


@dataclass
class Result:
    turns: int = 0  # completed turns that started inside the window
    completed_in_window: int = 0  # completed turns that ended inside the window
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    ttfa_ms: list[float] = field(default_factory=list)
    added_ttft_ms: list[float] = field(default_factory=list)
    added_ttfa_ms: list[float] = field(default_factory=list)
    audio_s: list[float] = field(default_factory=list)
    prefilled_tokens: list[int] = field(default_factory=list)
    loop_lag_ms: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    open_failures: int = 0


class Window:
    def __init__(self):
        self.go = asyncio.Event()
        self.start = 0.0
        self.end = 0.0


class User:
    def __init__(self, plan: Plan, stub: assistant_pb2_grpc.AssistantStub, index: int, result: Result, window: Window):
        self._plan = plan
        self._stub = stub
        self._index = index
        self._result = result
        self._window = window
        self._call = None
        self._random = random.Random(plan.seed * 100_003 + index)

    async def open(self) -> None:
        config = assistant_pb2.SessionConfig(max_reply_tokens=self._plan.max_reply_tokens,
                                             speech_output=self._plan.speech_output, seed=self._index)
        reply = await self._stub.CreateSession(assistant_pb2.CreateSessionRequest(config=config), timeout=60)
        self._call = self._stub.Converse()
        await self._call.write(assistant_pb2.ClientEvent(start=assistant_pb2.ConverseStart(
            session_id=reply.session.session_id)))
        event = await self._call.read()
        if event is grpc.aio.EOF or event.WhichOneof("event") != "ready":
            raise RuntimeError("the conversation did not start with `ready`")

    async def run(self) -> None:
        window, result = self._window, self._result
        await window.go.wait()
        cycle_guess = 5.0 + self._plan.user_speaks_s
        await asyncio.sleep(self._random.uniform(0, cycle_guess))
        turn = 0
        while time.time() < window.end:
            turn += 1
            sent_at = time.time()
            listen_s = await self._turn(f"t{turn}", sent_at)
            await asyncio.sleep(listen_s + self._plan.user_speaks_s)
        await self._call.done_writing()

    async def _turn(self, turn_id: str, sent_wall: float) -> float:
        """Runs one turn; returns how long the user still listens to its reply after it completed."""
        result, plan = self._result, self._plan
        measured = self._window.start <= sent_wall < self._window.end
        sent = time.perf_counter()
        await self._call.write(assistant_pb2.ClientEvent(turn=assistant_pb2.UserTurn(turn_id=turn_id, text=USER_TEXT)))
        first_text = first_audio = None
        failed = False
        samples, rate = 0, 24_000
        while True:
            event = await self._call.read()
            now = time.perf_counter()
            if event is grpc.aio.EOF:
                raise RuntimeError("the conversation stream ended mid-turn")
            kind = event.WhichOneof("event")
            if kind == "text_delta":
                if first_text is None and event.text_delta.text:
                    first_text = now
            elif kind == "audio":
                if first_audio is None:
                    first_audio = now
                samples += len(event.audio.pcm) // 2
                rate = event.audio.sample_rate_hz or rate
            elif kind == "error":
                # A failed turn still ends with turn_completed (outcome FAILED).
                failed = True
                if measured and len(result.errors) < 20:
                    result.errors.append(f"{event.error.code}: {event.error.message}")
            elif kind == "turn_completed":
                break
        done = event.turn_completed
        if failed or done.outcome != assistant_pb2.TURN_OUTCOME_COMPLETED:
            result.failed += measured
            return 1.0
        if time.time() < self._window.end and time.time() >= self._window.start:
            result.completed_in_window += 1
        audio_s = samples / rate
        if measured and first_text is not None:
            result.turns += 1
            prefilled = done.prefilled_prompt_tokens
            result.prefilled_tokens.append(prefilled)
            result.ttft_ms.append((first_text - sent) * 1000)
            result.added_ttft_ms.append((first_text - sent) * 1000 - plan.expected_ttft_ms(prefilled))
            if first_audio is not None:
                result.ttfa_ms.append((first_audio - sent) * 1000)
                result.added_ttfa_ms.append((first_audio - sent) * 1000 - plan.expected_ttfa_ms(prefilled))
                result.audio_s.append(audio_s)
        if first_audio is None:
            return 0.0
        return max(0.0, audio_s - (time.perf_counter() - first_audio))


async def _probe_lag(result: Result, window: Window) -> None:
    await window.go.wait()
    while time.time() < window.end:
        due = time.perf_counter() + LAG_PROBE_S
        await asyncio.sleep(LAG_PROBE_S)
        if time.time() >= window.start:
            result.loop_lag_ms.append((time.perf_counter() - due) * 1000)


async def _read_line() -> str:
    return (await asyncio.to_thread(sys.stdin.readline)).strip()


async def main_async() -> Result:
    plan = Plan(**json.loads(await _read_line()))
    result, window = Result(), Window()
    channel_count = -(-plan.sessions // plan.sessions_per_channel)
    channels = [open_channel(plan.address) for _ in range(channel_count)]
    stubs = [assistant_pb2_grpc.AssistantStub(channel) for channel in channels]
    users = [User(plan, stubs[i % channel_count], plan.seed * 1_000_000 + i, result, window)
             for i in range(plan.sessions)]
    opening = asyncio.Semaphore(plan.open_concurrency)

    async def open_user(user: User) -> User | None:
        async with opening:
            try:
                await user.open()
                return user
            except (grpc.aio.AioRpcError, RuntimeError) as error:
                result.open_failures += 1
                if len(result.errors) < 20:
                    result.errors.append(f"open: {error}")
                return None

    opened = [user for user in await asyncio.gather(*(open_user(u) for u in users)) if user is not None]
    print("READY", flush=True)
    _, start, end = (await _read_line()).split()
    window.start, window.end = float(start), float(end)
    cpu_before = time.process_time()
    window.go.set()
    lag = asyncio.create_task(_probe_lag(result, window))
    runs = [asyncio.create_task(user.run()) for user in opened]
    done, pending = await asyncio.wait(runs, timeout=max(0.0, window.end - time.time()) + FINISH_GRACE_S)
    for task in pending:
        task.cancel()
    for task in done:
        if task.exception() is not None and len(result.errors) < 20:
            result.errors.append(f"session: {task.exception()!r}")
    await lag
    result.cpu_s = time.process_time() - cpu_before
    for channel in channels:
        await channel.close()
    return result


def main() -> int:
    result = asyncio.run(main_async())
    print("RESULT " + json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
