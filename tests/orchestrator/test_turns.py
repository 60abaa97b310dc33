"""A conversation's turns end to end with fake model services and an in-memory session store: what history
keeps after a cancel, from the client's playback report or from the wall-clock bound."""

from __future__ import annotations

import asyncio

from services.orchestrator.backends import LLMDelta, LLMFacts, SpeechAudio, SpeechDone, SpeechSegmentDone
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.conversation import Conversation, ConversationDeps
from services.orchestrator.media import MediaLibrary
from services.orchestrator.pipeline import ReplyPipeline, SegmenterLimits
from services.orchestrator.prompt import PromptBuilder
from services.orchestrator.records import SessionRecord, SessionSettings, TurnOutcome
from services.orchestrator.sessions import SessionNotFound, TurnInProgress
from shared.tokenizer import QwenTokenizer
from tests.orchestrator.test_pipeline import FakeLLM
from vita.assistant.v1 import assistant_pb2

TOKENIZER = QwenTokenizer.from_dir()
SPECIAL = TOKENIZER.special
RATE = 24000
SEGMENT_MS = 1000  # each segment speaks for one second, delivered at once in four chunks
WORDS = ["One", " two", " three,", " four", " five", " six,", " seven", " eight", " nine."]


class MemoryStore:
    def __init__(self, session: SessionRecord):
        self.session = session
        self.turns = []
        self.lock = ""

    async def get(self, tenant, session_id):
        if session_id != self.session.session_id:
            raise SessionNotFound(session_id)
        return self.session

    async def history(self, tenant, session_id):
        return list(self.turns)

    async def append_turn(self, tenant, session_id, turn):
        self.turns.append(turn)

    async def acquire_turn(self, tenant, session_id, turn_id):
        if self.lock:
            raise TurnInProgress(self.lock)
        self.lock = turn_id

    async def refresh_turn(self, tenant, session_id, turn_id):
        pass

    async def release_turn(self, tenant, session_id, turn_id):
        if self.lock == turn_id:
            self.lock = ""


class TimedSpeechStream:
    """Every segment speaks SEGMENT_MS of audio, produced at once (much faster than real time)."""

    def __init__(self):
        self._queue: asyncio.Queue = asyncio.Queue()

    async def push(self, index, text):
        chunk = b"\x01\x00" * (RATE * SEGMENT_MS // 1000 // 4)
        for _ in range(4):
            await self._queue.put(SpeechAudio(chunk, RATE, index))
        await self._queue.put(SpeechSegmentDone(index, 40, "eos"))

    async def end(self):
        await self._queue.put(SpeechDone("completed"))

    def cancel(self):
        pass

    async def events(self):
        while True:
            event = await self._queue.get()
            yield event
            if isinstance(event, SpeechDone):
                return


class TimedSpeech:
    async def open(self, ids):
        return TimedSpeechStream()


class Transport:
    """Sends the conversation's queue as the server's Converse loop does, keeping the events."""

    def __init__(self, conversation: Conversation):
        self.events: list[assistant_pb2.ServerEvent] = []
        self._conversation = conversation
        self._task = asyncio.create_task(self._pump())

    async def _pump(self):
        while True:
            item = await self._conversation.outbound.get()
            if item.turn is not None and item.turn.dropped and item.droppable:
                continue
            event = item.materialise()
            if event is not None:
                self.events.append(event)
            item.mark_sent()

    async def until(self, predicate, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate(self):
                await asyncio.sleep(0.005)

    def audio_ms(self) -> float:
        return sum(len(e.audio.pcm) // 2 for e in self.events if e.HasField("audio")) * 1000 / RATE

    def completed(self) -> assistant_pb2.TurnCompleted | None:
        done = [e.turn_completed for e in self.events if e.HasField("turn_completed")]
        return done[0] if done else None

    async def close(self):
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


async def converse(speech_output: bool = True, tail: int = 3000):
    settings = OrchestratorSettings()
    record = SessionRecord(session_id="s1", tenant="t", created_unix_ms=0,
                           config=SessionSettings(speech_output=speech_output))
    store = MemoryStore(record)
    # Nine words, then a long tail that keeps the reply running until the test cancels it.
    deltas = [LLMDelta((SPECIAL.state_text_reply,), "☜")] + [LLMDelta((100 + i,), w) for i, w in enumerate(WORDS)]
    deps = ConversationDeps(
        settings=settings, store=store,
        pipeline=ReplyPipeline(FakeLLM(deltas + [LLMDelta((200,), " ten")] * tail, delay_s=0.002),
                               TimedSpeech(), SPECIAL, SegmenterLimits()),
        prompts=PromptBuilder(TOKENIZER),
        llm_facts=LLMFacts(max_context_tokens=4096, hidden_size=64, eos_token_id=SPECIAL.im_end, weights="fake"),
        media=MediaLibrary(store, None, None, 1024),
    )
    conversation = Conversation(deps, "t", record)
    return conversation, Transport(conversation), store


async def cancelled_turn(report_ms: float | None = None, wait_s: float = 0.0, speech_output: bool = True):
    conversation, transport, store = await converse(speech_output)
    try:
        conversation.start_text_turn(assistant_pb2.UserTurn(text="Count for me", turn_id="t1"))
        if speech_output:
            await transport.until(lambda t: t.audio_ms() >= 3 * SEGMENT_MS)  # three segments arrived
        else:
            await transport.until(lambda t: sum(e.HasField("text_delta") for e in t.events) >= len(WORDS))
        await asyncio.sleep(wait_s)
        if report_ms is not None:
            conversation.report_playback(assistant_pb2.PlaybackPosition(turn_id="t1", played_ms=int(report_ms)))
        conversation.cancel_turn("t1")
        await conversation.wait_idle()
        await transport.until(lambda t: t.completed() is not None)
        delivered = "".join(e.text_delta.text for e in transport.events if e.HasField("text_delta"))
        return transport.completed(), store.turns[-1], delivered
    finally:
        await transport.close()


async def test_a_cancelled_reply_keeps_the_text_the_client_reports_it_played():
    completed, record, delivered = await cancelled_turn(report_ms=1.5 * SEGMENT_MS)
    # Segment 0 whole, then half of "four five six," cut back to a whole word.
    assert record.reply_text == completed.reply_text == "One two three, four"
    assert record.reply_token_ids == [SPECIAL.state_text_reply, 100, 101, 102, 103]
    assert record.outcome is TurnOutcome.CANCELLED and completed.outcome == assistant_pb2.TURN_OUTCOME_CANCELLED
    assert delivered.startswith("One two three, four five six, seven eight nine.")  # far more was sent


async def test_without_a_report_history_keeps_what_real_time_playback_allowed():
    # Three seconds of audio arrived at once; the cancel comes 1.1 s after the first chunk, so about
    # one segment had time to play (the margin absorbs a slow scheduler).
    completed, record, _ = await cancelled_turn(wait_s=1.1)
    assert record.reply_text.startswith("One two three,")
    assert "six" not in record.reply_text
    # At once: nothing had time to play.
    completed, record, _ = await cancelled_turn()
    assert record.reply_text == "" and record.reply_token_ids == [SPECIAL.state_text_reply]


async def test_a_report_cannot_claim_more_than_was_sent():
    completed, record, delivered = await cancelled_turn(report_ms=3_600_000)
    assert record.reply_text.startswith("One two three, four five six, seven eight nine.")
    assert delivered.startswith(record.reply_text)


async def test_a_reply_without_speech_keeps_the_text_delivered():
    completed, record, delivered = await cancelled_turn(speech_output=False)
    assert record.reply_text == delivered and len(delivered) > len("".join(WORDS))
    assert record.outcome is TurnOutcome.CANCELLED


async def test_a_completed_reply_keeps_all_its_text():
    conversation, transport, store = await converse(tail=0)
    try:
        conversation.start_text_turn(assistant_pb2.UserTurn(text="Count for me", turn_id="t1"))
        await transport.until(lambda t: t.completed() is not None)
    finally:
        await transport.close()
    record = store.turns[-1]
    assert record.outcome is TurnOutcome.COMPLETED and record.reply_text == "".join(WORDS)
    assert transport.completed().outcome == assistant_pb2.TURN_OUTCOME_COMPLETED


async def test_a_cancel_stops_the_reply_only_once_it_streams_and_the_turn_goes_on():
    from services.orchestrator.delivery import TurnDelivery
    from services.orchestrator.turn import CancelReason, TurnHandle, TurnState

    handle = TurnHandle(TurnDelivery("t", "text", 0))
    steps = []

    async def turn():
        reply = asyncio.create_task(asyncio.sleep(60))
        handle.streaming(reply)
        try:
            await reply
        except asyncio.CancelledError:
            steps.append("reply stopped")
        steps.append("recorded")

    handle.start(turn())
    await asyncio.sleep(0.01)
    assert handle.state is TurnState.RUNNING and handle.active
    handle.cancel(CancelReason.BARGE_IN)
    handle.cancel(CancelReason.DISCONNECT)  # the first reason stands
    await handle.wait()
    assert steps == ["reply stopped", "recorded"] and handle.state is TurnState.DONE
    assert handle.cancel_reason is CancelReason.BARGE_IN and handle.delivery.dropped
    assert handle.outcome(None) is TurnOutcome.BARGED_IN

    early = TurnHandle(TurnDelivery("u", "text", 0))
    early.start(asyncio.sleep(60))  # still preparing: the whole turn stops, nothing is recorded
    await asyncio.sleep(0)
    early.cancel(CancelReason.CLIENT)
    await early.wait()
    assert not early.active and early.state is TurnState.DONE and early.cancel_reason is CancelReason.CLIENT
