"""Speech in for one Converse stream: PCM goes to the audio service as it arrives (features are computed
while the user speaks); its VAD events and finished utterances come back to the conversation."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from services.orchestrator.backends import (
    AudioBackend,
    BackendError,
    CallIds,
    VadParameters,
    VoiceEvent,
    VoiceFormat,
    VoiceStream,
)

log = logging.getLogger(__name__)

MIN_SAMPLE_RATE_HZ = 8000
MAX_SAMPLE_RATE_HZ = 192000


class VoiceInput:
    def __init__(
        self,
        audio: AudioBackend,
        ids: CallIds,
        fmt: VoiceFormat,
        vad: VadParameters,
        on_event: Callable[[VoiceEvent], Awaitable[None]],
        on_error: Callable[[BackendError], None],
    ):
        self._audio = audio
        self._ids = ids
        self._format = fmt
        self._vad = vad
        self._on_event = on_event
        self._on_error = on_error
        self._stream: VoiceStream | None = None
        self._pump: asyncio.Task | None = None

    async def _ensure_stream(self) -> VoiceStream:
        if self._stream is None:
            self._stream = await self._audio.open_stream(self._ids, self._format, self._vad)
            self._pump = asyncio.create_task(self._pump_events(self._stream))
        return self._stream

    async def append(self, pcm: bytes) -> None:
        try:
            stream = await self._ensure_stream()
            await stream.send(pcm)
        except BackendError as error:
            self._fail(error)

    async def commit(self) -> None:
        try:
            stream = await self._ensure_stream()
            await stream.commit()
        except BackendError as error:
            self._fail(error)

    async def _pump_events(self, stream: VoiceStream) -> None:
        try:
            async for event in stream.events():
                await self._on_event(event)
        except BackendError as error:
            self._fail(error)

    def _fail(self, error: BackendError) -> None:
        """The audio stream ended with an error (bad PCM, service down): report it; the next audio opens
        a fresh stream, and the session is untouched."""
        self._reset()
        self._on_error(error)

    def _reset(self) -> None:
        if self._stream is not None:
            self._stream.close()
        if self._pump is not None and self._pump is not asyncio.current_task():
            self._pump.cancel()
        self._stream, self._pump = None, None

    async def close(self) -> None:
        pump = self._pump
        self._reset()
        if pump is not None and pump is not asyncio.current_task():
            try:
                await pump
            except asyncio.CancelledError:
                pass
