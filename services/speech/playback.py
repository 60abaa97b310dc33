"""How far ahead of its listener a stream is: the playback deadline the speech scheduler orders work by.

A listener starts playing at the stream's first audio chunk and plays in real time, so its audio runs out
at `first audio + audio delivered` (the deadline); the audio buffered is that deadline minus now. When the
client reports its own play position (it started late, paused, or stalled), the deadline counts from that
report instead: `report time + audio delivered - position played`.

Torch-free, like the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000


@dataclass
class PlaybackClock:
    sample_rate_hz: int
    delivered_samples: int = 0
    first_audio_ns: int | None = None
    reported_played_ns: int | None = None  # the client's last reported position in the stream's audio
    reported_at_ns: int = 0

    @property
    def started(self) -> bool:
        """Some audio was delivered: the listener is playing (or has run dry)."""
        return self.first_audio_ns is not None

    @property
    def delivered_ns(self) -> int:
        return self.delivered_samples * NS_PER_S // self.sample_rate_hz

    def note_audio(self, samples: int, now_ns: int) -> None:
        if self.first_audio_ns is None:
            self.first_audio_ns = now_ns
        self.delivered_samples += samples

    def report(self, played_ms: int, now_ns: int) -> None:
        """The client's position; never past what was delivered (a client cannot play audio it lacks)."""
        self.reported_played_ns = min(max(0, played_ms) * NS_PER_MS, self.delivered_ns)
        self.reported_at_ns = now_ns

    def deadline_ns(self) -> int | None:
        """When the listener runs out of audio; None before the first chunk. Fixed while nothing new is
        delivered, so a stream kept waiting becomes the most urgent in time (no stream starves)."""
        if self.first_audio_ns is None:
            return None
        if self.reported_played_ns is not None:
            return self.reported_at_ns + self.delivered_ns - self.reported_played_ns
        return self.first_audio_ns + self.delivered_ns

    def buffered_ns(self, now_ns: int) -> int:
        """Audio delivered that the listener has not played yet (0 before the first chunk)."""
        deadline = self.deadline_ns()
        return 0 if deadline is None else max(0, deadline - now_ns)
