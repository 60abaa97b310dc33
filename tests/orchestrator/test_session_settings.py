"""Session settings are validated once, by the shared model, at CreateSession and in the audio service."""

from __future__ import annotations

import json

import pytest

from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.records import SessionRecord, TurnOutcome, TurnRecord
from services.orchestrator.server import InvalidConfig, settings_from_proto
from vita.assistant.v1 import assistant_pb2


def create(**config) -> object:
    return settings_from_proto(assistant_pb2.SessionConfig(**config), OrchestratorSettings())


@pytest.mark.parametrize(
    ("vad", "message"),
    [
        # Passed CreateSession, then failed on the first audio chunk.
        ({"max_utterance_ms": 500}, "vad.max_utterance_ms (500) must exceed vad.min_utterance_ms (1000)"),
        # Passed CreateSession, then silently became 1000.
        ({"min_utterance_ms": 0}, "vad.min_utterance_ms: Input should be greater than 0"),
        ({"min_silence_ms": 0}, "vad.min_silence_ms"),
        ({"start_threshold": 0.5, "end_threshold": 0.6}, "vad.end_threshold (0.6) must not exceed"),
        ({"max_utterance_ms": 200_000}, "vad.max_utterance_ms: Input should be less than or equal to 120000"),
    ],
)
def test_vad_values_the_audio_service_would_refuse_are_refused_at_create_session(vad, message):
    with pytest.raises(InvalidConfig) as refused:
        create(vad=vad)
    assert message in str(refused.value)


def test_the_audio_service_refuses_the_same_values_with_the_same_words():
    from services.audio.vad import VadConfig, VadConfigError

    with pytest.raises(VadConfigError) as refused:
        VadConfig(max_utterance_ms=500)
    assert "vad.max_utterance_ms (500) must exceed vad.min_utterance_ms (1000)" in str(refused.value)
    with pytest.raises(VadConfigError, match="vad.min_utterance_ms"):
        VadConfig(min_utterance_ms=0)


def test_values_given_are_kept_and_unset_ones_take_the_defaults():
    settings = create(temperature=0.7, vad={"pre_roll_ms": 0, "start_threshold": 0.6})
    assert settings.temperature == 0.7  # float32 on the wire, rounded back to what the client wrote
    assert (settings.vad.pre_roll_ms, settings.vad.start_threshold) == (0, 0.6)
    assert (settings.vad.min_utterance_ms, settings.vad.max_utterance_ms, settings.max_reply_tokens) == (1000, 30_000, 256)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"max_reply_tokens": 0}, "max_reply_tokens"),
        ({"max_reply_tokens": 100_000}, "max_reply_tokens must be between 1 and 4096"),
        ({"temperature": 2.5}, "temperature"),
        ({"max_image_tiles": 13}, "max_image_tiles"),
        ({"max_history_turns": -1}, "max_history_turns"),
    ],
)
def test_other_settings_are_bounded(config, message):
    with pytest.raises(InvalidConfig, match=message):
        create(**config)


def test_records_stored_before_enums_and_stricter_vad_checks_still_read():
    old_session = {"session_id": "s", "tenant": "t", "created_unix_ms": 1,
                   "config": {"max_reply_tokens": 64, "vad": {"enabled": False, "min_utterance_ms": 0}}}
    record = SessionRecord.model_validate_json(json.dumps(old_session))
    assert record.config.max_reply_tokens == 64 and not record.config.vad.enabled
    assert record.config.vad.min_utterance_ms == 1000  # what the audio service made of the 0
    old_turn = TurnRecord.model_validate_json('{"turn_id": "a", "started_unix_ms": 1, "outcome": "barged_in"}')
    assert old_turn.outcome is TurnOutcome.BARGED_IN
    assert json.loads(old_turn.model_dump_json())["outcome"] == "barged_in"  # still written as the word
