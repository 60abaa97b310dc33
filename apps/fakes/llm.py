"""The fake LLM: the vita.llm.v1.LLM service with a per-session prompt cache and paced tokens.

Cached tokens are the common prefix of this prompt and the session's last prompt plus its reply, as a
real KV cache finds them; only the rest is "prefilled" (llm_prefill_ms_per_token each).
"""

from __future__ import annotations

import collections
import time

import grpc

from apps.fakes.config import FakeSettings
from apps.fakes.pacing import Slots, sleep_until
from apps.fakes.reply import ReplyTokens
from shared.grpc_server import LoadingGate
from shared.presets import get_preset
from vita.common.v1 import common_pb2
from vita.llm.v1 import llm_pb2, llm_pb2_grpc


def prompt_sequence(segments) -> list:
    """The prompt as a flat sequence: token ids, and one (content_id, row) pair per embedding row."""
    sequence: list = []
    for segment in segments:
        if segment.HasField("tokens"):
            sequence.extend(segment.tokens.ids)
        else:
            span = segment.embeddings
            sequence.extend((span.content_id, row) for row in range(span.num_rows))
    return sequence


def common_prefix(a: list, b: list) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class SessionPrompts:
    """Each session's last prompt + reply (what its KV cache would hold), least recently used dropped."""

    def __init__(self, capacity: int):
        self._capacity = capacity
        self._entries: collections.OrderedDict[str, list] = collections.OrderedDict()

    def cached(self, session_id: str, prompt: list) -> int:
        held = self._entries.get(session_id)
        return common_prefix(held, prompt) if held else 0

    def store(self, session_id: str, sequence: list) -> None:
        self._entries[session_id] = sequence
        self._entries.move_to_end(session_id)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def release(self, session_id: str) -> None:
        self._entries.pop(session_id, None)


def _timing(stage: str, queue_ns: int, compute_ns: int) -> common_pb2.StageTiming:
    return common_pb2.StageTiming(stage=stage, queue_ns=queue_ns, compute_ns=compute_ns)


class FakeLLM(llm_pb2_grpc.LLMServicer, LoadingGate):
    def __init__(self, settings: FakeSettings, preset: str):
        self._settings = settings
        self._preset = get_preset(preset)
        self._prompts = SessionPrompts(settings.llm_cache_sessions)
        self._slots = Slots(settings.llm_max_batch)
        self._reply: ReplyTokens | None = None
        self._weights = common_pb2.WeightsInfo(source="fake", name=preset, dtype="none", device="none")

    def attach(self, reply: ReplyTokens) -> None:
        self._reply = reply
        self.open()

    async def Describe(self, request, context):
        await self.require_loaded(context)
        return llm_pb2.DescribeResponse(
            max_context_tokens=self._preset.max_context_tokens,
            hidden_size=self._preset.llm.hidden_size,
            vocab_size=self._preset.llm.vocab_size,
            eos_token_id=self._reply.stop_id,
            weights=self._weights,
        )

    async def ReleaseSession(self, request, context):
        await self.require_loaded(context)
        if not request.ctx.session_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ctx.session_id is required")
        self._prompts.release(request.ctx.session_id)
        return llm_pb2.ReleaseSessionResponse(released=True)

    async def Generate(self, request, context):
        await self.require_loaded(context)
        ctx = request.ctx
        if not ctx.session_id or not ctx.turn_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ctx.session_id and ctx.turn_id are required")
        if request.max_new_tokens <= 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "max_new_tokens must be > 0")
        prompt = prompt_sequence(request.segments)
        if not prompt:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the prompt is empty")
        settings, reply = self._settings, self._reply
        async with self._slots.hold() as queue_ns:
            started = time.perf_counter()
            cached = self._prompts.cached(ctx.session_id, prompt)
            prefilled = len(prompt) - cached
            prefill_s = (settings.llm_first_token_ms + settings.llm_prefill_ms_per_token * prefilled) / 1000
            step_s = 1.0 / settings.llm_decode_tokens_per_s
            # The reply's own tokens, then <|im_end|> when it fits: a "stop"; else cut at the limit.
            stops = settings.llm_reply_tokens + 1 <= request.max_new_tokens
            length = settings.llm_reply_tokens + 1 if stops else request.max_new_tokens
            generated: list[int] = []
            for index in range(length):
                await sleep_until(started + prefill_s + index * step_s)
                if index == length - 1 and stops:
                    ids, text = [reply.stop_id], ""
                else:
                    token_id, text = reply.piece(index)
                    ids = [token_id]
                    if index == 0:  # the state symbol comes with the first word, as one delta
                        ids, text = [reply.state_id, token_id], "☜" + text
                generated.extend(ids)
                yield llm_pb2.GenerateResponse(delta=llm_pb2.TokenDelta(token_ids=ids, text=text))
            finished = time.perf_counter()
        self._prompts.store(ctx.session_id, prompt + generated)
        prefill_ns = int(prefill_s * 1e9)
        yield llm_pb2.GenerateResponse(done=llm_pb2.GenerateDone(
            finish_reason=llm_pb2.FINISH_REASON_STOP if stops else llm_pb2.FINISH_REASON_LENGTH,
            prompt_tokens=len(prompt),
            cached_tokens=cached,
            prefilled_tokens=prefilled,
            generated_tokens=len(generated),
            timings=[
                _timing("llm.queue", queue_ns, 0),
                _timing("llm.prefill", 0, prefill_ns),
                _timing("llm.decode", 0, max(0, int((finished - started) * 1e9) - prefill_ns)),
            ],
            max_batch_size=1,
        ))
