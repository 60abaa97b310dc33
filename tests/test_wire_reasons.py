"""Reasons and outcomes travel as proto enums: each word a service uses has its value, and the orchestrator
reads every value back as the same word."""

from __future__ import annotations

import pytest

from services.audio.events import DropReason
from services.orchestrator.grpc_backends import reason_name
from vita.audio.v1 import audio_pb2
from vita.llm.v1 import llm_pb2
from vita.speech.v1 import speech_pb2

# The words the servicers turn into enum values (services/*/server.py).
CASES = [
    (llm_pb2.FinishReason, "FINISH_REASON_", ["stop", "length", "cancelled"]),
    (speech_pb2.SegmentFinishReason, "SEGMENT_FINISH_REASON_", ["eos", "length_cap", "empty"]),
    (speech_pb2.SynthesisEndReason, "SYNTHESIS_END_REASON_", ["completed", "cancelled"]),
    (audio_pb2.DropReason, "DROP_REASON_", [reason.name.lower() for reason in DropReason]),
]


@pytest.mark.parametrize(("enum_type", "prefix", "words"), CASES)
def test_every_reason_word_has_an_enum_value_and_reads_back_the_same(enum_type, prefix, words):
    for word in words:
        value = enum_type.Value(prefix + word.upper())
        assert value != 0 and reason_name(enum_type, value) == word
