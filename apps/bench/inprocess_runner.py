"""`vita bench --inprocess`: the same workload through the same engines in this process — no gRPC, no
Redis (InProcessModels + ReplyPipeline + PromptBuilder, history in memory). The floor the distributed
numbers are compared with.

Fairness: the engines get the same torch intra-op thread count as the launcher gives each service
(StackConfig.torch_threads), the same engine and segmenter settings (VITA_LLM_* / VITA_SPEECH_* /
VITA_ORCH_* defaults), the same reply lengths and per-turn seeds; first text / first audio are taken
when the reply sink receives them, the in-process equivalent of the client receiving the event."""

from __future__ import annotations

import time
import uuid

from apps.bench.driver import run_phases
from apps.bench.stats import FirstSegmentWatch, TurnSample
from apps.bench.workload import TEXT, BenchTurn, SessionScript, Workload


class _Sink:
    def __init__(self, sample: TurnSample):
        self._sample = sample
        self._watch = FirstSegmentWatch()

    async def text(self, text: str, token_ids: tuple[int, ...]) -> None:
        self._sample.on_text(text, time.perf_counter(), self._watch)

    async def audio(self, pcm: bytes, sample_rate_hz: int, segment_index: int) -> None:
        now = time.perf_counter()
        self._sample.first_audio = self._sample.first_audio or now
        self._sample.sample_rate_hz = sample_rate_hz
        self._sample.audio_chunks.append((now, len(pcm) // 2))

    async def suppressed(self) -> None:
        pass


class InProcessEnv:
    """Models, pipeline and prompt builder shared by every simulated session."""

    def __init__(self, preset: str, torch_threads: int, checkpoint=None):
        import torch

        from services.orchestrator.config import OrchestratorSettings
        from apps.inprocess import InProcessModels
        from services.orchestrator.pipeline import ReplyPipeline, SegmenterLimits
        from services.orchestrator.prompt import PromptBuilder
        from services.orchestrator.records import SessionSettings
        from shared.settings import ServiceSettings

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)  # what shared.grpc_server.serve does in each service
        self.models = InProcessModels(ServiceSettings(preset=preset, checkpoint=checkpoint, torch_threads=torch_threads))
        settings = OrchestratorSettings()
        limits = SegmenterLimits(settings.first_segment_max_chars, settings.segment_min_chars, settings.segment_max_chars)
        self.pipeline = ReplyPipeline(self.models.llm, self.models.speech, self.models.tokenizer.special, limits)
        self.prompts = PromptBuilder(self.models.tokenizer)
        self.session_defaults = SessionSettings()
        self.max_context_tokens = 0

    async def start(self) -> None:
        self.max_context_tokens = (await self.models.llm.describe()).max_context_tokens

    def close(self) -> None:
        self.models.close()


class InProcessSession:
    def __init__(self, env: InProcessEnv, workload: Workload, script: SessionScript):
        self._env = env
        self._workload = workload
        self._script = script
        self._session_id = f"bench-{script.index}-{uuid.uuid4().hex[:8]}"
        self._history: list = []

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        await self._env.models.llm.release_session(self._session_id)

    async def turn(self, index: int, turn: BenchTurn, warmup: bool) -> TurnSample:
        from services.orchestrator.backends import BackendError, CallIds
        from services.orchestrator.pipeline import ReplyRequest, ReplyResult
        from services.orchestrator.prompt import PromptTooLong, UserMessage
        from services.orchestrator.records import TurnRecord

        sample = TurnSample(self._script.index, index, turn.kind, warmup)
        if turn.kind != TEXT:
            # Spoken and image turns need the audio / vision engines, which InProcessModels does not
            # build yet: counted as unsupported, like a deployment without those services.
            sample.unsupported = True
            return sample
        env, defaults = self._env, self._env.session_defaults
        turn_id = uuid.uuid4().hex
        started_unix_ms = int(time.time() * 1000)
        sample.input_end = time.perf_counter()
        try:
            prompt, _ = env.prompts.build(
                self._history, UserMessage(text=turn.text), max_context_tokens=env.max_context_tokens,
                reply_reserve_tokens=self._workload.reply_tokens,
                max_history_turns=defaults.max_history_turns if self._workload.history_turns is None
                else self._workload.history_turns,
            )
            request = ReplyRequest(
                ids=CallIds(self._session_id, turn_id, self._workload.turn_seed(self._script.index, index)),
                prompt=prompt, max_new_tokens=self._workload.reply_tokens, temperature=defaults.temperature,
                speech_output=self._workload.speech_output,
            )
            result = await env.pipeline.run(request, _Sink(sample), ReplyResult())
        except (BackendError, PromptTooLong) as error:
            sample.error = f"{getattr(error, 'code', 'INVALID_ARGUMENT')}: {error}"
            return sample
        sample.finished = time.perf_counter()
        sample.outcome = "suppressed" if result.suppressed else "completed"
        sample.reply_tokens = len(result.token_ids)
        if result.llm_done is not None:
            sample.prefilled_tokens = result.llm_done.prefilled_tokens
            sample.cached_tokens = result.llm_done.cached_tokens
        for stage in result.stages:
            sample.add_stage(stage.stage, stage.queue_ns / 1e6, stage.compute_ns / 1e6)
        self._history.append(TurnRecord(
            turn_id=turn_id, started_unix_ms=started_unix_ms, user_text=turn.text, reply_text=result.text,
            reply_token_ids=list(result.token_ids), outcome=sample.outcome,
        ))
        return sample


async def run_inprocess(env: InProcessEnv, workload: Workload) -> tuple[list[TurnSample], float]:
    if not env.max_context_tokens:
        await env.start()
    drivers = [InProcessSession(env, workload, script) for script in workload.sessions]
    return await run_phases(workload, drivers)

