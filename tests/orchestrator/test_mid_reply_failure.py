"""A model service that fails mid-reply (a stall past its deadline, a crash) ends the turn with one clear
error event; history keeps the part of the reply that was delivered, marked failed."""

from __future__ import annotations

from services.orchestrator.backends import BackendError, LLMDelta, LLMFacts
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.conversation import Conversation, ConversationDeps
from services.orchestrator.media import MediaLibrary
from services.orchestrator.pipeline import ReplyPipeline, SegmenterLimits
from services.orchestrator.prompt import PromptBuilder
from services.orchestrator.records import SessionRecord, SessionSettings, TurnOutcome
from tests.orchestrator.test_turns import SPECIAL, TOKENIZER, WORDS, MemoryStore, TimedSpeech, Transport
from vita.assistant.v1 import assistant_pb2

DEADLINE_EXCEEDED = 4
STALL = BackendError("DEADLINE_EXCEEDED", "the llm service stalled mid-reply: no token within 10 s; try again shortly")


class StallingLLM:
    """Streams `deltas`, then fails as a stalled call does once its deadline passes."""

    def __init__(self, deltas: list[LLMDelta]):
        self.deltas = deltas

    async def generate(self, ids, prompt, *, max_new_tokens, temperature, top_p):
        for delta in self.deltas:
            yield delta
        raise STALL


class UnreachableSpeech:
    async def open(self, ids):
        raise BackendError("UNAVAILABLE", "the speech service is unavailable; try again shortly")


async def failed_turn(deltas: list[LLMDelta], llm=None, speech=None, speech_output: bool = False):
    record = SessionRecord(session_id="s1", tenant="t", created_unix_ms=0,
                           config=SessionSettings(speech_output=speech_output))
    store = MemoryStore(record)
    deps = ConversationDeps(
        settings=OrchestratorSettings(), store=store,
        pipeline=ReplyPipeline(llm or StallingLLM(deltas), speech or TimedSpeech(), SPECIAL, SegmenterLimits()),
        prompts=PromptBuilder(TOKENIZER),
        llm_facts=LLMFacts(max_context_tokens=4096, hidden_size=64, eos_token_id=SPECIAL.im_end, weights="fake"),
        media=MediaLibrary(store, None, None, 1024),
    )
    conversation = Conversation(deps, "t", record)
    transport = Transport(conversation)
    try:
        conversation.start_text_turn(assistant_pb2.UserTurn(text="Count for me", turn_id="t1"))
        await conversation.wait_idle()
        await transport.until(lambda t: any(e.HasField("error") for e in t.events))
        delivered = "".join(e.text_delta.text for e in transport.events if e.HasField("text_delta"))
        errors = [e.error for e in transport.events if e.HasField("error")]
        return store, delivered, errors, store.lock
    finally:
        await transport.close()


async def test_a_stall_mid_reply_keeps_what_was_delivered():
    deltas = [LLMDelta((SPECIAL.state_text_reply,), "☜")] + [LLMDelta((100 + i,), w) for i, w in enumerate(WORDS)]
    store, delivered, errors, lock = await failed_turn(deltas)
    assert [(e.code, e.message) for e in errors] == [(DEADLINE_EXCEEDED, STALL.message)]
    assert delivered == "".join(WORDS)
    [turn] = store.turns
    assert turn.outcome == TurnOutcome.FAILED and turn.reply_text == delivered and turn.user_text == "Count for me"
    assert lock == ""  # the session is free for the next turn


async def test_a_failure_before_any_output_records_nothing():
    store, delivered, errors, lock = await failed_turn([])
    assert [e.code for e in errors] == [DEADLINE_EXCEEDED] and delivered == ""
    assert store.turns == [] and lock == ""


async def test_a_spoken_reply_of_which_nothing_was_heard_records_nothing():
    from tests.orchestrator.test_pipeline import FakeLLM

    deltas = [LLMDelta((SPECIAL.state_text_reply,), "☜")] + [LLMDelta((100 + i,), w) for i, w in enumerate(WORDS)]
    store, delivered, errors, lock = await failed_turn([], llm=FakeLLM(deltas), speech=UnreachableSpeech(),
                                                       speech_output=True)
    assert [e.code for e in errors] == [14] and "speech service" in errors[0].message
    assert store.turns == [] and lock == ""  # the text deltas were shown, but no audio was heard
