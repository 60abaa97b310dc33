"""What the fault suite injected and what it lost, summed over the run and printed at its end, so the
figure can be reported: every case counts its faults, and checks every session it made and every turn that
completed before the fault against what the server still has."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

import sdk


@dataclass
class FaultLedger:
    faults: int = 0
    sessions_checked: int = 0
    turns_checked: int = 0
    sessions_lost: int = 0
    turns_lost: int = 0

    def injected(self, count: int = 1) -> None:
        self.faults += count

    async def check(self, client: sdk.AsyncClient, session_id: str, completed_turn_ids: list[str]) -> list[str]:
        """Counts the session and the completed turns the server no longer has; returns the stored turn ids."""
        self.sessions_checked += 1
        self.turns_checked += len(completed_turn_ids)
        try:
            session = await client.get_session(session_id)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            self.sessions_lost += 1
            self.turns_lost += len(completed_turn_ids)
            return []
        stored = [turn.turn_id for turn in session.history]
        self.turns_lost += len(set(completed_turn_ids) - set(stored))
        return stored

    def summary(self) -> str:
        return (f"fault suite: {self.faults} faults injected, {self.sessions_lost} sessions lost "
                f"(of {self.sessions_checked} checked), {self.turns_lost} turns lost (of {self.turns_checked})")


LEDGER = FaultLedger()
