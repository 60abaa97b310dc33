"""A simulated player for clients that do not play the reply audio themselves (a backend that forwards
it, a test, a benchmark): each turn's audio starts playing when it arrives and plays in real time,
stalling when it runs out. Its position is what the server is told was heard."""

from __future__ import annotations

from dataclasses import dataclass

# How often a playing turn's position is reported (the server's history only needs it at a cancel or
# barge-in, which are reported at once; the ticks keep it fresh in between).
REPORT_INTERVAL_S = 0.2


@dataclass
class _TurnPlayback:
    received_ms: float = 0.0
    played_ms: float = 0.0
    updated_at: float = 0.0  # perf_counter seconds of the last advance
    reported_ms: int = -1
    audio_done: bool = False  # the turn ended: no more audio comes

    def advance(self, now: float) -> None:
        self.played_ms = min(self.received_ms, self.played_ms + max(0.0, now - self.updated_at) * 1000.0)
        self.updated_at = now


class SimulatedPlayback:
    def __init__(self):
        self._turns: dict[str, _TurnPlayback] = {}

    def on_audio(self, turn_id: str, duration_ms: float, now: float) -> None:
        turn = self._turns.get(turn_id)
        if turn is None:
            turn = self._turns[turn_id] = _TurnPlayback(updated_at=now)
        turn.advance(now)
        turn.received_ms += duration_ms

    def on_turn_end(self, turn_id: str) -> None:
        if turn_id in self._turns:
            self._turns[turn_id].audio_done = True

    def stop(self, turn_id: str, now: float) -> int | None:
        """The player stops this turn (a flush or a cancel): its final position, None if it had no audio."""
        turn = self._turns.pop(turn_id, None)
        if turn is None:
            return None
        turn.advance(now)
        return round(turn.played_ms)

    def position(self, turn_id: str, now: float) -> int | None:
        turn = self._turns.get(turn_id)
        if turn is None:
            return None
        turn.advance(now)
        return round(turn.played_ms)

    def due(self, now: float) -> list[tuple[str, int]]:
        """Positions that changed since the last report; a turn whose audio has all played is dropped
        after its last report."""
        reports = []
        for turn_id, turn in list(self._turns.items()):
            turn.advance(now)
            played = round(turn.played_ms)
            if played != turn.reported_ms:
                turn.reported_ms = played
                reports.append((turn_id, played))
            if turn.audio_done and turn.played_ms >= turn.received_ms:
                del self._turns[turn_id]
        return reports
