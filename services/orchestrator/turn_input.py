"""A user turn as received, checked against the deployment's limits before any work starts."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from services.orchestrator.backends import MediaPiece, StageTime
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.media import MediaRequest
from services.orchestrator.records import MediaRef, SessionSettings
from shared.session_settings import MAX_IMAGE_TILES
from vita.assistant.v1 import assistant_pb2


class TurnRejected(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class PendingTurn:
    """A user turn as received, before its media are encoded."""

    turn_id: str
    input_kind: str  # "text" | "audio"
    input_end_ns: int
    text: str = ""
    media: list[MediaRequest] = field(default_factory=list)
    audio: tuple[MediaPiece, MediaRef] | None = None  # a streamed utterance, already encoded
    seed: int | None = None
    max_reply: int = 0
    speech_end_ns: int | None = None
    # Stage timings of work done before the turn started (a streamed utterance's audio encode).
    media_timings: tuple[StageTime, ...] = ()

    @property
    def metric_input(self) -> str:
        """The `input` label of the latency metrics: "audio" (spoken, or an audio clip), "image" (an
        image, a video or camera frames: their encode is part of the wait) or "text". Bounded on purpose."""
        if self.input_kind == "audio" or any(request.kind == "audio" for request in self.media):
            return "audio"
        if self.media:
            return "image"
        return "text"


class TurnInputs:
    """Checks what a client sends for a turn; raises TurnRejected with the message the client gets."""

    def __init__(self, settings: OrchestratorSettings, vision_enabled: bool):
        self._settings = settings
        self._vision_enabled = vision_enabled
        # Live camera: (capture ms, JPEG, arrival monotonic ns), the newest last.
        self._camera: deque[tuple[int, bytes, int]] = deque(maxlen=settings.max_camera_frames)

    def text_turn(self, message: assistant_pb2.UserTurn, config: SessionSettings, turn_id: str) -> PendingTurn:
        input_end_ns = time.perf_counter_ns()
        text = message.text
        if not text.strip() and not message.media:
            raise TurnRejected("INVALID_ARGUMENT", "the turn has no text (empty or only whitespace)")
        if len(text) > self._settings.max_text_chars:
            raise TurnRejected(
                "INVALID_ARGUMENT", f"the text is {len(text)} characters; the limit is {self._settings.max_text_chars}"
            )
        media = self.media_requests(message.media, config)
        max_reply = self._reply_limit(message.max_reply_tokens if message.HasField("max_reply_tokens") else None, config)
        seed = message.seed if message.HasField("seed") else config.seed
        return PendingTurn(turn_id, "text", input_end_ns, text=text, media=media, seed=seed, max_reply=max_reply)

    def _reply_limit(self, requested: int | None, config: SessionSettings) -> int:
        limit = self._settings.max_reply_tokens_limit
        requested = config.max_reply_tokens if requested is None else requested
        if not 0 < requested <= limit:
            raise TurnRejected("INVALID_ARGUMENT", f"max_reply_tokens must be between 1 and {limit}")
        return requested

    def media_requests(self, inputs, config: SessionSettings) -> list[MediaRequest]:
        settings = self._settings
        if len(inputs) > settings.max_media_per_turn:
            raise TurnRejected(
                "INVALID_ARGUMENT",
                f"the turn carries {len(inputs)} media items; the limit is {settings.max_media_per_turn} per turn",
            )
        requests = []
        for position, item in enumerate(inputs):
            kind = item.WhichOneof("kind")
            data = getattr(item, kind) if kind else b""
            if not data:
                raise TurnRejected("INVALID_ARGUMENT", f"media item {position} is empty")
            if len(data) > settings.max_media_bytes:
                raise TurnRejected(
                    "INVALID_ARGUMENT",
                    f"media item {position} is {len(data)} bytes; the limit is {settings.max_media_bytes} bytes",
                )
            max_tiles = item.max_tiles or config.max_image_tiles
            if not 1 <= max_tiles <= MAX_IMAGE_TILES:
                raise TurnRejected("INVALID_ARGUMENT", f"max_tiles must be between 1 and {MAX_IMAGE_TILES}")
            requests.append(MediaRequest(kind=kind, data=data, max_tiles=max_tiles))
        if requests and not self._vision_enabled:
            raise TurnRejected("FAILED_PRECONDITION", "images and video are not served by this deployment")
        return requests

    def add_camera_frame(self, frame: assistant_pb2.CameraFrame) -> None:
        if not frame.jpeg:
            raise TurnRejected("INVALID_ARGUMENT", "a camera frame needs JPEG bytes")
        self._camera.append((frame.timestamp_ms, frame.jpeg, time.monotonic_ns()))

    def camera_request(self) -> MediaRequest | None:
        """The live camera frames of the last seconds become the turn's video."""
        horizon = time.monotonic_ns() - int(self._settings.camera_window_s * 1e9)
        frames = tuple((ts, jpeg) for ts, jpeg, received in self._camera if received >= horizon)
        self._camera.clear()
        if not frames or not self._vision_enabled:
            return None
        return MediaRequest(kind="frames", frames=frames)
