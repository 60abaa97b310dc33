"""A Converse stream's server events: how they are built, and the queue they leave by.

Data and control travel differently: reply text and audio are queued in order and tagged with their
turn, so that a cancel can discard what is still queued; errors, flushes and completions always go out.
"""

from __future__ import annotations

import asyncio

from services.orchestrator import metrics
from services.orchestrator.delivery import Outgoing, TurnDelivery
from services.orchestrator.records import TurnOutcome
from vita.assistant.v1 import assistant_pb2

# google.rpc.Code values carried by Error events.
CODES = {
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
}
CLOSE = object()  # ends the stream once everything queued before it is sent

_OUTCOMES = {
    TurnOutcome.COMPLETED: assistant_pb2.TURN_OUTCOME_COMPLETED,
    TurnOutcome.CANCELLED: assistant_pb2.TURN_OUTCOME_CANCELLED,
    TurnOutcome.BARGED_IN: assistant_pb2.TURN_OUTCOME_BARGED_IN,
    TurnOutcome.SUPPRESSED: assistant_pb2.TURN_OUTCOME_SUPPRESSED,
    TurnOutcome.FAILED: assistant_pb2.TURN_OUTCOME_FAILED,
}


def outcome_to_proto(outcome: TurnOutcome) -> int:
    return _OUTCOMES[TurnOutcome(outcome)]


class Outbox:
    def __init__(self, session_id: str):
        self.session_id = session_id
        self.queue: asyncio.Queue[Outgoing | object] = asyncio.Queue()

    def event(self, turn_id: str = "", **kind) -> assistant_pb2.ServerEvent:
        return assistant_pb2.ServerEvent(session_id=self.session_id, turn_id=turn_id, **kind)

    def send(self, item: Outgoing) -> None:
        self.queue.put_nowait(item)

    def send_event(self, turn_id: str = "", **kind) -> None:
        self.send(Outgoing(event=self.event(turn_id, **kind)))

    def error_item(self, turn_id: str, code: str, message: str, retry_after_ms: int = 0) -> Outgoing:
        metrics.ERRORS.labels(code).inc()
        error = assistant_pb2.Error(code=CODES[code], message=message, retry_after_ms=max(0, int(retry_after_ms)))
        return Outgoing(event=self.event(turn_id, error=error))

    def send_error(self, turn_id: str, code: str, message: str, retry_after_ms: int = 0) -> None:
        self.send(self.error_item(turn_id, code, message, retry_after_ms))

    def close(self) -> None:
        self.queue.put_nowait(CLOSE)


class StreamSink:
    """ReplySink that queues a turn's reply events on the stream, tagged with their turn."""

    def __init__(self, outbox: Outbox, delivery: TurnDelivery):
        self._outbox = outbox
        self._delivery = delivery

    async def text(self, text: str, token_ids: tuple[int, ...]) -> None:
        turn_id = self._delivery.turn_id
        event = self._outbox.event(turn_id, text_delta=assistant_pb2.TextDelta(text=text)) if text else None
        self._outbox.send(Outgoing(event=event, turn=self._delivery, droppable=True, text=text, token_ids=token_ids))

    async def audio(self, pcm: bytes, sample_rate_hz: int, segment_index: int) -> None:
        event = self._outbox.event(
            self._delivery.turn_id,
            audio=assistant_pb2.AudioOut(pcm=pcm, sample_rate_hz=sample_rate_hz, segment_index=segment_index),
        )
        self._outbox.send(Outgoing(event=event, turn=self._delivery, droppable=True, audio_samples=len(pcm) // 2,
                                   sample_rate_hz=sample_rate_hz))

    async def suppressed(self) -> None:
        self._outbox.send_event(self._delivery.turn_id, reply_suppressed=assistant_pb2.ReplySuppressed())
