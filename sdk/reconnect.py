"""When a dropped stream is opened again, and how long the SDK keeps trying."""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

# A drop, a restarting server, or a server cancelling streams as it stops: a new stream may succeed.
RETRIABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
                       grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class ReconnectPolicy:
    initial_delay_s: float = 0.2
    max_delay_s: float = 5.0
    multiplier: float = 2.0
    # Stop trying after this long without a stream; the conversation then ends (StreamEnded).
    give_up_after_s: float = 120.0

    def delay(self, attempt: int) -> float:
        """Delay before attempt `attempt` (1-based), with ±20% jitter so clients do not reconnect in step."""
        base = min(self.max_delay_s, self.initial_delay_s * self.multiplier ** (attempt - 1))
        return base * random.uniform(0.8, 1.2)
