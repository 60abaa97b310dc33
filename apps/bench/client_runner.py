"""Drives the public Assistant API through the client SDK: one client (its own connection), session and
open conversation per simulated user, turns sent back to back, every server event time-stamped on
arrival by the SDK."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc

import sdk
from apps.bench.driver import run_phases
from apps.bench.stats import FirstSegmentWatch, TurnSample
from apps.bench.workload import (
    AUDIO_CHUNK_MS,
    IMAGE,
    INPUT_SAMPLE_RATE_HZ,
    SPOKEN,
    BenchTurn,
    SessionScript,
    Workload,
)

# An input kind this deployment does not serve yet is refused with one of these: the turn is counted
# as unsupported (not failed) and the session skips later turns of that kind.
UNSUPPORTED_CODES = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED)


class ApiSession:
    """One simulated user of the public API."""

    def __init__(self, address: str, api_key: str | None, workload: Workload, script: SessionScript,
                 turn_timeout_s: float):
        self._client = sdk.AsyncClient(address, api_key=api_key)
        self._workload = workload
        self._script = script
        self._timeout = turn_timeout_s
        self._session_id = ""
        self._conv: sdk.Conversation | None = None
        self._unsupported: set[str] = set()

    # The seed of spoken turns (AudioCommit carries none, so they use the session's).
    @property
    def session_seed(self) -> int:
        return self._workload.turn_seed(self._script.index, -1)

    @property
    def _vad(self) -> bool:
        return self._workload.speech_end == "vad"

    async def open(self) -> None:
        config = sdk.SessionConfig(
            max_reply_tokens=self._workload.reply_tokens,
            seed=self.session_seed,
            speech_output=self._workload.speech_output,
            vad=sdk.VoiceActivity(enabled=self._vad),
            max_history_turns=self._workload.history_turns,
        )
        self._session_id = (await self._client.create_session(config)).session_id
        await self._open_conversation()

    async def _open_conversation(self) -> None:
        audio = sdk.AudioFormat(INPUT_SAMPLE_RATE_HZ, "pcm16") if self._workload.has_spoken else None
        self._conv = await self._client.resume(self._session_id, audio=audio)

    async def close(self) -> None:
        if self._conv is not None:
            await self._conv.close()
        await self._client.close()  # a closed channel closes again quietly

    async def turn(self, index: int, turn: BenchTurn, warmup: bool) -> TurnSample:
        sample = TurnSample(self._script.index, index, turn.kind, warmup)
        if turn.kind in self._unsupported:
            sample.unsupported = True
            return sample
        turn_id = f"bench-{self._script.index}-{index}-{uuid.uuid4().hex[:8]}"
        done = asyncio.Event()
        sender: asyncio.Task | None = None
        try:
            if turn.kind == SPOKEN:
                waiter = asyncio.ensure_future(self._conv.next_turn()) if self._vad else None
                sender = asyncio.create_task(self._stream_audio(turn, turn_id, sample, done))
                handle = await asyncio.wait_for(waiter if waiter is not None else sender, self._timeout)
            else:
                media = [sdk.Image(turn.image, turn.max_tiles)] if turn.kind == IMAGE else []
                sample.input_end = time.perf_counter()
                handle = await self._conv.send_text(
                    turn.text, media=media, turn_id=turn_id, seed=self._workload.turn_seed(self._script.index, index),
                    max_reply_tokens=self._workload.reply_tokens)
            await asyncio.wait_for(self._collect(handle, sample), self._timeout)
        except asyncio.TimeoutError:
            sample.error = f"DEADLINE_EXCEEDED: no turn_completed within {self._timeout:.0f} s"
            # The stream is in an unknown state: the next turn gets a new one.
            await self._conv.close()
            await self._open_conversation()
        except sdk.TurnFailed as failed:
            self._on_failed(sample, failed)
        except (sdk.TurnInterruptedError, sdk.ConversationClosed) as cut:
            sample.error = f"STREAM_ENDED: {cut}"
        finally:
            done.set()
            if sender is not None:
                # Not cancelled: it stops by itself after the chunk in flight.
                await asyncio.gather(sender, return_exceptions=True)
        if sample.unsupported:
            self._unsupported.add(turn.kind)
        return sample

    def _on_failed(self, sample: TurnSample, failed: sdk.TurnFailed) -> None:
        if failed.code in UNSUPPORTED_CODES and sample.kind in (SPOKEN, IMAGE) and sample.first_text is None:
            sample.unsupported = True
        else:
            sample.error = f"{failed.code.name}: {failed.message}"

    async def _stream_audio(self, turn: BenchTurn, turn_id: str, sample: TurnSample,
                            done: asyncio.Event) -> sdk.Turn | None:
        """Real-time pace: chunk i leaves when its last sample has been "recorded" (t0 + (i+1)·40 ms).
        Push-to-talk ends with a commit and returns its turn."""
        chunk_samples = INPUT_SAMPLE_RATE_HZ * AUDIO_CHUNK_MS // 1000
        chunk_s = chunk_samples / INPUT_SAMPLE_RATE_HZ
        silence = b"\x00\x00" * chunk_samples
        t0 = time.perf_counter()
        sample.speech_end = t0 + turn.speech_end_s
        if self._vad:
            sample.input_end = sample.speech_end  # the server's VAD has to find it
        offset, chunk = 0, 0
        # Under VAD a client keeps streaming its microphone (silence here) until the reply is over.
        while not done.is_set() and (offset < len(turn.pcm16) or self._vad):
            chunk += 1
            delay = t0 + chunk * chunk_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            data = turn.pcm16[offset: offset + 2 * chunk_samples] if offset < len(turn.pcm16) else silence
            offset += len(data)
            await self._conv.append_audio(data)
        if self._vad or done.is_set():
            return None
        sample.input_end = time.perf_counter()
        return await self._conv.commit_audio(turn_id=turn_id)

    async def _collect(self, handle: sdk.Turn, sample: TurnSample) -> None:
        watch = FirstSegmentWatch()
        async for event in handle.events():
            if isinstance(event, sdk.TextDelta):
                sample.on_text(event.text, event.received_at, watch)
            elif isinstance(event, sdk.AudioChunk):
                sample.first_audio = sample.first_audio or event.received_at
                sample.sample_rate_hz = event.sample_rate_hz
                sample.audio_chunks.append((event.received_at, len(event.pcm) // 2))
            elif isinstance(event, sdk.TurnCompleted):
                sample.finished = event.received_at
                sample.outcome = event.outcome
                sample.reply_tokens = event.reply_tokens
                sample.prefilled_tokens = event.prefilled_prompt_tokens
                sample.cached_tokens = event.cached_prompt_tokens
                sample.server_ttft_ms = event.timings.ttft_ms or None
                sample.server_ttfa_ms = event.timings.ttfa_ms or None
                for stage in event.timings.stages:
                    sample.add_stage(stage.stage, stage.queue_ms, stage.compute_ms)
        await handle.result()  # raises for an error or an interruption


async def run_distributed(address: str, workload: Workload, *, api_key: str | None = None,
                          turn_timeout_s: float = 600.0) -> tuple[list[TurnSample], float]:
    # One client (one HTTP/2 connection) per session, like independent users.
    drivers = [ApiSession(address, api_key, workload, script, turn_timeout_s) for script in workload.sessions]
    try:
        return await run_phases(workload, drivers)
    finally:
        for driver in drivers:
            await driver.close()  # again for the opened ones: a no-op
