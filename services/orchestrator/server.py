"""The public `Assistant` API: sessions in Redis, and one `Conversation` per Converse stream."""

from __future__ import annotations

import asyncio
import logging

import grpc

from services.orchestrator import metrics
from services.orchestrator.auth import ApiKeys
from services.orchestrator.backends import BackendError
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.conversation import CLOSE, Conversation, ConversationDeps
from services.orchestrator.grpc_backends import GrpcAudio, GrpcLLM, GrpcSpeech, GrpcVision
from services.orchestrator.media import MediaLibrary
from services.orchestrator.pipeline import ReplyPipeline, SegmenterLimits
from services.orchestrator.prompt import PromptBuilder
from services.orchestrator.records import SessionRecord, SessionSettings, TurnRecord, VadSettings
from services.orchestrator.sessions import SessionNotFound, SessionStore
from shared.channels import open_channel
from shared.grpc_server import LoadingGate
from shared.settings import ServiceSettings
from shared.tokenizer import QwenTokenizer
from vita.assistant.v1 import assistant_pb2, assistant_pb2_grpc

log = logging.getLogger(__name__)

MAX_IMAGE_TILES = 12


class InvalidConfig(ValueError):
    pass


def settings_from_proto(config: assistant_pb2.SessionConfig, limits: OrchestratorSettings) -> SessionSettings:
    """Fills defaults and validates what a client asked for."""
    settings = SessionSettings()
    if config.HasField("max_reply_tokens"):
        if not 0 < config.max_reply_tokens <= limits.max_reply_tokens_limit:
            raise InvalidConfig(f"max_reply_tokens must be between 1 and {limits.max_reply_tokens_limit}")
        settings.max_reply_tokens = config.max_reply_tokens
    if config.HasField("speech_output"):
        settings.speech_output = config.speech_output
    if config.HasField("temperature"):
        if not 0.0 <= config.temperature <= 2.0:
            raise InvalidConfig("temperature must be between 0 and 2")
        settings.temperature = config.temperature
    if config.HasField("seed"):
        settings.seed = config.seed
    if config.HasField("max_image_tiles"):
        if not 1 <= config.max_image_tiles <= MAX_IMAGE_TILES:
            raise InvalidConfig(f"max_image_tiles must be between 1 and {MAX_IMAGE_TILES}")
        settings.max_image_tiles = config.max_image_tiles
    if config.HasField("max_history_turns"):
        if config.max_history_turns < 0:
            raise InvalidConfig("max_history_turns must be >= 0")
        settings.max_history_turns = config.max_history_turns
    vad = VadSettings()
    for name in VadSettings.model_fields:
        if config.vad.HasField(name):
            setattr(vad, name, getattr(config.vad, name))
    if not 0.0 < vad.end_threshold <= vad.start_threshold < 1.0:
        raise InvalidConfig("VAD thresholds must satisfy 0 < end_threshold <= start_threshold < 1")
    if vad.min_silence_ms < 0 or vad.pre_roll_ms < 0 or vad.min_utterance_ms < 0 or vad.max_utterance_ms <= 0:
        raise InvalidConfig("VAD durations must be >= 0 (max_utterance_ms > 0)")
    settings.vad = vad
    return settings


def settings_to_proto(settings: SessionSettings) -> assistant_pb2.SessionConfig:
    config = assistant_pb2.SessionConfig(
        max_reply_tokens=settings.max_reply_tokens,
        speech_output=settings.speech_output,
        temperature=settings.temperature,
        max_image_tiles=settings.max_image_tiles,
        max_history_turns=settings.max_history_turns,
        vad=assistant_pb2.VoiceActivityConfig(**settings.vad.model_dump()),
    )
    if settings.seed is not None:
        config.seed = settings.seed
    return config


def session_to_proto(record: SessionRecord, history: list[TurnRecord], running_turn_id: str) -> assistant_pb2.Session:
    return assistant_pb2.Session(
        session_id=record.session_id,
        config=settings_to_proto(record.config),
        created_unix_ms=record.created_unix_ms,
        running_turn_id=running_turn_id,
        history=[
            assistant_pb2.HistoryTurn(
                turn_id=turn.turn_id,
                user_text=turn.user_text,
                reply_text=turn.reply_text,
                outcome=turn.outcome,
                media=[ref.kind for ref in turn.media],
                started_unix_ms=turn.started_unix_ms,
            )
            for turn in history
        ],
    )


class AssistantServicer(assistant_pb2_grpc.AssistantServicer, LoadingGate):
    def __init__(self, settings: OrchestratorSettings, api_keys: ApiKeys):
        self._settings = settings
        self._keys = api_keys
        self._deps: ConversationDeps | None = None

    def attach(self, deps: ConversationDeps) -> None:
        self._deps = deps
        self.open()

    async def CreateSession(self, request, context):
        await self.require_loaded(context)
        tenant = await self._keys.require(context)
        try:
            config = settings_from_proto(request.config, self._settings)
        except InvalidConfig as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        record = await self._deps.store.create(tenant, config)
        return assistant_pb2.CreateSessionResponse(session=session_to_proto(record, [], ""))

    async def GetSession(self, request, context):
        await self.require_loaded(context)
        tenant = await self._keys.require(context)
        record = await self._session_or_abort(tenant, request.session_id, context)
        history = await self._deps.store.history(tenant, record.session_id)
        running = await self._deps.store.running_turn(tenant, record.session_id)
        return assistant_pb2.GetSessionResponse(session=session_to_proto(record, history, running))

    async def DeleteSession(self, request, context):
        await self.require_loaded(context)
        tenant = await self._keys.require(context)
        record = await self._session_or_abort(tenant, request.session_id, context)
        await self._deps.store.delete(tenant, record.session_id)
        await self._deps.pipeline.llm.release_session(record.session_id)
        return assistant_pb2.DeleteSessionResponse()

    async def _session_or_abort(self, tenant: str, session_id: str, context) -> SessionRecord:
        if not session_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session_id is required")
        try:
            return await self._deps.store.get(tenant, session_id)
        except SessionNotFound:
            # Another tenant's session is indistinguishable from a missing one.
            await context.abort(grpc.StatusCode.NOT_FOUND, f"session {session_id} not found")

    async def Converse(self, request_iterator, context):
        await self.require_loaded(context)
        tenant = await self._keys.require(context)
        try:
            first = await anext(request_iterator)
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the stream ended before its `start` event")
        if first.WhichOneof("event") != "start":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first client event must be `start`")
        record = await self._session_or_abort(tenant, first.start.session_id, context)
        conversation = Conversation(self._deps, tenant, record)
        conversation.configure_input(first.start)
        history = await self._deps.store.history(tenant, record.session_id)
        running = await self._deps.store.running_turn(tenant, record.session_id)
        yield conversation.event(
            ready=assistant_pb2.Ready(session=session_to_proto(record, history, running), weights=self._deps.llm_facts.weights)
        )
        metrics.ACTIVE_SESSIONS.inc()
        reader = asyncio.create_task(self._read_client(request_iterator, conversation))
        try:
            while True:
                item = await conversation.outbound.get()
                if item is CLOSE:
                    return
                if item.turn is not None and item.turn.dropped and item.droppable:
                    continue
                event = item.materialise()
                if event is not None:
                    yield event
                item.mark_sent()
        finally:
            metrics.ACTIVE_SESSIONS.dec()
            reader.cancel()
            await conversation.shutdown()

    async def _read_client(self, request_iterator, conversation: Conversation) -> None:
        try:
            async for event in request_iterator:
                kind = event.WhichOneof("event")
                if kind == "turn":
                    conversation.start_text_turn(event.turn)
                elif kind == "audio":
                    await conversation.append_audio(event.audio.data)
                elif kind == "audio_commit":
                    await conversation.commit_audio(event.audio_commit)
                elif kind == "camera_frame":
                    conversation.add_camera_frame(event.camera_frame)
                elif kind == "cancel":
                    conversation.cancel_turn(event.cancel.turn_id)
                elif kind == "start":
                    conversation.send_error("", "INVALID_ARGUMENT", "`start` may only be the first event")
                else:
                    conversation.send_error("", "INVALID_ARGUMENT", "empty client event")
            # The client half-closed: finish the running turn, then end the stream.
            await conversation.wait_idle()
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError:
            pass  # the client went away; the writer's finally stops the turn
        finally:
            conversation.close()


class OrchestratorApp:
    name = "orchestrator"
    metrics = metrics.RPC

    def __init__(self, common: ServiceSettings, settings: OrchestratorSettings):
        self._common = common
        self._settings = settings
        self._keys = ApiKeys(settings.api_keys)
        self._servicer = AssistantServicer(settings, self._keys)
        self._channels: list[grpc.aio.Channel] = []
        self._store: SessionStore | None = None

    def register(self, server: grpc.aio.Server) -> list[str]:
        assistant_pb2_grpc.add_AssistantServicer_to_server(self._servicer, server)
        return [assistant_pb2.DESCRIPTOR.services_by_name["Assistant"].full_name]

    async def load(self) -> None:
        if not self._keys.enabled:
            log.warning("no API keys configured: the Assistant API is open to every caller on this address")
        settings = self._settings
        self._store = SessionStore.from_url(settings.redis_url, settings.session_ttl_s, settings.turn_lock_ttl_s)
        await self._store.ping()
        llm_channel = open_channel(settings.llm_address, self._common.max_message_bytes)
        speech_channel = open_channel(settings.speech_address, self._common.max_message_bytes)
        self._channels = [llm_channel, speech_channel]
        llm = GrpcLLM(llm_channel, settings.connect_timeout_s)
        speech = GrpcSpeech(speech_channel, settings.connect_timeout_s)
        vision = audio = None
        if settings.vision_address:
            vision_channel = open_channel(settings.vision_address, self._common.max_message_bytes)
            self._channels.append(vision_channel)
            vision = GrpcVision(vision_channel, settings.connect_timeout_s)
        if settings.audio_address:
            audio_channel = open_channel(settings.audio_address, self._common.max_message_bytes)
            self._channels.append(audio_channel)
            audio = GrpcAudio(audio_channel, settings.connect_timeout_s)
        facts = await self._wait_for(llm)
        tokenizer = await asyncio.to_thread(
            lambda: QwenTokenizer.from_dir(self._common.checkpoint) if self._common.checkpoint else QwenTokenizer.from_dir()
        )
        limits = SegmenterLimits(settings.first_segment_max_chars, settings.segment_min_chars, settings.segment_max_chars)
        self._servicer.attach(
            ConversationDeps(
                settings=settings,
                store=self._store,
                pipeline=ReplyPipeline(llm, speech, tokenizer.special, limits),
                prompts=PromptBuilder(tokenizer),
                llm_facts=facts,
                media=MediaLibrary(self._store, vision, audio, settings.embedding_cache_bytes),
                audio=audio,
            )
        )

    async def _wait_for(self, llm: GrpcLLM):
        """The LLM's facts (context limit, width) are needed before serving; wait for it to come up."""
        while True:
            try:
                return await llm.describe()
            except BackendError as error:
                log.info("waiting for the LLM service: %s", error.message)
                await asyncio.sleep(0.5)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        if self._store is not None:
            await self._store.close()
