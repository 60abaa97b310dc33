"""The public `Assistant` API: sessions in Redis, and one `Conversation` per Converse stream."""

from __future__ import annotations

import asyncio
import functools
import logging

import grpc
from pydantic import ValidationError

from services.orchestrator import metrics
from services.orchestrator.admission import Admission, AdmissionLimits, AdmissionRefused
from services.orchestrator.auth import ApiKeys
from services.orchestrator.backends import BackendError
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.ids import id_problem
from services.orchestrator.conversation import CLOSE, Conversation, ConversationDeps
from services.orchestrator.draining import SHUTTING_DOWN, LiveConversations
from services.orchestrator.deadlines import CallDeadlines
from services.orchestrator.grpc_backends import GrpcAudio, GrpcLLM, GrpcSpeech, GrpcVision
from services.orchestrator.redis_connect import RedisTls, describe_url
from services.orchestrator.replicas import Replicas, Routing
from services.orchestrator.media import MediaLibrary
from services.orchestrator.outbox import outcome_to_proto
from services.orchestrator.pipeline import ReplyPipeline, SegmenterLimits
from services.orchestrator.prompt import PromptBuilder
from services.orchestrator.records import SessionRecord, SessionSettings, TurnRecord
from services.orchestrator.sessions import STORE_RETRY_HINT_MS, SessionNotFound, SessionStore, StoreUnavailable
from services.orchestrator.wire import Unparseable, add_assistant_to_server
from shared import tls
from shared.channels import open_channel
from shared.grpc_server import LoadingGate
from shared.keepalive import Keepalive
from shared.retry_hint import abort_with_retry
from shared.session_settings import describe
from shared.settings import ServiceSettings
from shared.tokenizer import QwenTokenizer
from vita.assistant.v1 import assistant_pb2, assistant_pb2_grpc

log = logging.getLogger(__name__)


class InvalidConfig(ValueError):
    pass


def _set_fields(message) -> dict:
    """The fields a client set; float32 values rounded back to what the client wrote (0.7, not 0.699999988)."""
    return {
        field.name: round(value, 6) if isinstance(value, float) else value
        for field, value in message.ListFields()
        if not field.message_type
    }


def settings_from_proto(config: assistant_pb2.SessionConfig, limits: OrchestratorSettings) -> SessionSettings:
    """Fills defaults and validates what a client asked for: the shared settings model decides both, the
    same one the audio service applies to the VAD values it receives."""
    try:
        settings = SessionSettings(**_set_fields(config), vad=_set_fields(config.vad))
    except ValidationError as error:
        raise InvalidConfig(describe(error)) from None
    if settings.max_reply_tokens > limits.max_reply_tokens_limit:
        raise InvalidConfig(f"max_reply_tokens must be between 1 and {limits.max_reply_tokens_limit}")
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
                outcome=outcome_to_proto(turn.outcome),
                media=[ref.kind for ref in turn.media],
                started_unix_ms=turn.started_unix_ms,
            )
            for turn in history
        ],
    )


async def _require_parsed(request, context) -> None:
    if isinstance(request, Unparseable):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)


_KNOWN_ENCODINGS = ", ".join(
    name for name in assistant_pb2.AudioEncoding.keys() if name != "AUDIO_ENCODING_UNSPECIFIED"
)


def input_format_problem(start: assistant_pb2.ConverseStart) -> str | None:
    """A `start` whose audio encoding is not one this API defines (proto3 enums carry any number)."""
    if start.input_encoding not in assistant_pb2.AudioEncoding.values():
        return f"input_encoding {start.input_encoding} is not a known AudioEncoding; use one of {_KNOWN_ENCODINGS}"
    return None


async def abort_refused(context: grpc.aio.ServicerContext, refused: AdmissionRefused) -> None:
    await abort_with_retry(context, grpc.StatusCode[refused.code], refused.message, refused.retry_after_ms)


def store_outage_is_unavailable(rpc):
    """A session call that meets the store down (restarting, failing over) ends UNAVAILABLE with a retry
    hint; without this it reached the client as UNKNOWN."""

    @functools.wraps(rpc)
    async def guarded(self, request, context):
        try:
            return await rpc(self, request, context)
        except StoreUnavailable as error:
            await abort_with_retry(context, grpc.StatusCode.UNAVAILABLE, str(error), STORE_RETRY_HINT_MS)

    return guarded


class AssistantServicer(assistant_pb2_grpc.AssistantServicer, LoadingGate):
    def __init__(self, settings: OrchestratorSettings, api_keys: ApiKeys):
        self._settings = settings
        self._keys = api_keys
        self._deps: ConversationDeps | None = None
        self.live = LiveConversations()

    def attach(self, deps: ConversationDeps) -> None:
        self._deps = deps
        self.open()

    @store_outage_is_unavailable
    async def CreateSession(self, request, context):
        await self.require_loaded(context)
        tenant = await self._keys.require(context)
        await _require_parsed(request, context)
        try:
            config = settings_from_proto(request.config, self._settings)
        except InvalidConfig as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        record = await self._deps.store.create(tenant, config)
        try:
            await self._deps.admission.add_session(tenant, record.session_id)
        except AdmissionRefused as refused:  # the tenant's session limit (counted after the create: atomic)
            await self._deps.store.delete(tenant, record.session_id)
            await abort_refused(context, refused)
        return assistant_pb2.CreateSessionResponse(session=session_to_proto(record, [], ""))

    @store_outage_is_unavailable
    async def GetSession(self, request, context):
        await self.require_loaded(context)
        tenant = await self._keys.require(context)
        await _require_parsed(request, context)
        record = await self._session_or_abort(tenant, request.session_id, context)
        history = await self._deps.store.history(tenant, record.session_id)
        running = await self._deps.store.running_turn(tenant, record.session_id)
        return assistant_pb2.GetSessionResponse(session=session_to_proto(record, history, running))

    @store_outage_is_unavailable
    async def DeleteSession(self, request, context):
        await self.require_loaded(context)
        tenant = await self._keys.require(context)
        await _require_parsed(request, context)
        record = await self._session_or_abort(tenant, request.session_id, context)
        await self._deps.store.delete(tenant, record.session_id)
        await self._deps.admission.remove_session(tenant, record.session_id)
        await self._deps.pipeline.llm.release_session(record.session_id)
        return assistant_pb2.DeleteSessionResponse()

    async def _session_or_abort(self, tenant: str, session_id: str, context) -> SessionRecord:
        problem = id_problem("session_id", session_id)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            return await self._deps.store.get(tenant, session_id)
        except StoreUnavailable as error:  # also reached from Converse, which the decorator does not guard
            await abort_with_retry(context, grpc.StatusCode.UNAVAILABLE, str(error), STORE_RETRY_HINT_MS)
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
        await _require_parsed(first, context)
        if first.WhichOneof("event") != "start":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first client event must be `start`")
        record = await self._session_or_abort(tenant, first.start.session_id, context)
        problem = input_format_problem(first.start)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        conversation = Conversation(self._deps, tenant, record)
        conversation.configure_input(first.start)
        history = await self._deps.store.history(tenant, record.session_id)
        running = await self._deps.store.running_turn(tenant, record.session_id)
        yield conversation.event(
            ready=assistant_pb2.Ready(session=session_to_proto(record, history, running), weights=self._deps.llm_facts.weights)
        )
        metrics.ACTIVE_SESSIONS.inc()
        self.live.add(conversation)
        reader = asyncio.create_task(self._read_client(request_iterator, conversation))
        try:
            while True:
                item = await conversation.outbound.get()
                if item is CLOSE:
                    if self._stopping:  # drained (services.orchestrator.draining): clients reconnect elsewhere
                        await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
                    return
                if item.turn is not None and item.turn.dropped and item.droppable:
                    continue
                event = item.materialise()
                if event is not None:
                    yield event
                item.mark_sent()
        finally:
            metrics.ACTIVE_SESSIONS.dec()
            self.live.discard(conversation)
            reader.cancel()
            await conversation.shutdown()

    async def _read_client(self, request_iterator, conversation: Conversation) -> None:
        try:
            async for event in request_iterator:
                if isinstance(event, Unparseable):
                    # The stream's framing is intact: the event is refused and the stream goes on.
                    conversation.send_error("", "INVALID_ARGUMENT", event.message)
                    continue
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
                elif kind == "playback":
                    conversation.report_playback(event.playback)
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
        self._replica_groups: list[Replicas] = []
        self._store: SessionStore | None = None
        self._admission: Admission | None = None

    def register(self, server: grpc.aio.Server) -> list[str]:
        add_assistant_to_server(self._servicer, server)
        return [assistant_pb2.DESCRIPTOR.services_by_name["Assistant"].full_name]

    async def load(self) -> None:
        metrics.watch_event_loop(asyncio.get_running_loop())
        if not self._keys.enabled:
            log.warning("no API keys configured: the Assistant API is open to every caller on this address")
        settings = self._settings
        redis_tls = RedisTls.from_settings(settings)
        try:
            self._store = SessionStore.from_url(settings.redis_url, settings.session_ttl_s, settings.turn_lock_ttl_s,
                                                redis_tls, settings.redis_min_replica_acks, settings.redis_ack_timeout_ms)
            self._admission = Admission.from_url(settings.redis_url, AdmissionLimits.from_settings(settings), redis_tls)
        except ValueError as error:
            raise InvalidConfig(f"VITA_ORCH_REDIS_URL {describe_url(settings.redis_url)}: {error}") from None
        await self._store.ping()
        # TLS (mTLS with a client certificate) to the model services once VITA_TLS_CA is set.
        internal_tls = tls.channel_credentials(self._common)
        # Keepalive as the model services accept it: the audio stream sits idle between turns.
        keepalive = Keepalive.from_settings(self._common)
        deadlines = CallDeadlines.from_settings(settings)

        def replicas(service: str, address: str) -> Replicas:
            """One channel per listed replica (retries go to another one); see services/orchestrator/replicas.py."""
            routing = Routing(affine=settings.llm_routing == "affine", spill_in_flight=settings.llm_spill_in_flight)
            try:
                opened = Replicas.open(
                    service, address,
                    lambda target: open_channel(target, self._common.max_message_bytes, internal_tls, keepalive),
                    retry=settings.retry_on_other_replica, routing=routing, refresh_s=settings.dns_refresh_s,
                )
            except ValueError as error:
                raise InvalidConfig(f"VITA_ORCH_{service.upper()}_ADDRESS: {error}") from None
            self._replica_groups.append(opened)
            return opened

        self._replica_groups = []
        llm = GrpcLLM(replicas("llm", settings.llm_address), deadlines)
        speech = GrpcSpeech(replicas("speech", settings.speech_address), deadlines)
        vision = audio = None
        if settings.vision_address:
            vision = GrpcVision(replicas("vision", settings.vision_address), deadlines)
        if settings.audio_address:
            audio = GrpcAudio(replicas("audio", settings.audio_address), deadlines)
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
                admission=self._admission,
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

    async def drain(self, timeout_s: float) -> None:
        """SIGTERM: new calls and turns are refused, running turns finish (within `timeout_s`) and write
        their history, then the streams end; the model services and Redis are still up meanwhile."""
        self._servicer.stop_accepting()
        await self._servicer.live.drain(timeout_s)

    async def close(self) -> None:
        for group in self._replica_groups:
            await group.close()
        if self._store is not None:
            await self._store.close()
        if self._admission is not None:
            await self._admission.close()
