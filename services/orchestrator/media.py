"""Images, videos and audio clips of a conversation: encoded through the vision and audio services,
kept by reference in history, and restored for a re-prefill.

History keeps media *references* — a content hash plus the encoded bytes in Redis
under that hash — never pixels or embeddings in the turn record. The LLM's KV cache normally covers
past media, so their rows are not even sent; when it does not (a cold or evicted session, another LLM
replica), the LLM answers FAILED_PRECONDITION and the orchestrator restores the rows: from a small
in-memory embedding cache if it still has them, else by re-encoding the stored bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from services.orchestrator import metrics
from services.orchestrator.backends import (
    AudioBackend,
    BackendError,
    CallIds,
    EncodedMedia,
    MediaPiece,
    PromptPiece,
    StageTime,
    VisionBackend,
)
from services.orchestrator.records import MediaRef
from services.orchestrator.sessions import SessionStore
from shared.wire_tensor import WireTensor


class MediaRejected(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def content_id(kind: str, data: bytes, max_tiles: int = 0) -> str:
    """Same bytes encoded the same way → same LLM rows → same id (the KV-cache prefix key)."""
    digest = hashlib.sha256(f"{kind}:{max_tiles}:".encode() + data).hexdigest()
    return f"{kind}-{digest[:40]}"


@dataclass(frozen=True)
class MediaRequest:
    kind: str  # "image" | "video" | "frames" | "audio"
    data: bytes = b""
    max_tiles: int = 1
    frames: tuple[tuple[int, bytes], ...] = ()

    def blob(self) -> bytes:
        if self.kind != "frames":
            return self.data
        # Camera frames are stored as one blob: [8-byte timestamp][4-byte length][jpeg]...
        parts = [ts.to_bytes(8, "little", signed=True) + len(jpeg).to_bytes(4, "little") + jpeg for ts, jpeg in self.frames]
        return b"".join(parts)

    @staticmethod
    def frames_from_blob(blob: bytes) -> tuple[tuple[int, bytes], ...]:
        frames, offset = [], 0
        while offset < len(blob):
            ts = int.from_bytes(blob[offset : offset + 8], "little", signed=True)
            size = int.from_bytes(blob[offset + 8 : offset + 12], "little")
            frames.append((ts, blob[offset + 12 : offset + 12 + size]))
            offset += 12 + size
        return tuple(frames)


class EmbeddingCache:
    """content_id → rows, LRU bounded by bytes: spares re-encoding for a recent cache miss."""

    def __init__(self, max_bytes: int):
        self._max_bytes = max_bytes
        self._bytes = 0
        self._rows: OrderedDict[str, WireTensor] = OrderedDict()

    def get(self, key: str) -> WireTensor | None:
        rows = self._rows.get(key)
        if rows is not None:
            self._rows.move_to_end(key)
        return rows

    def put(self, key: str, rows: WireTensor) -> None:
        if rows.nbytes > self._max_bytes:
            return
        if key in self._rows:
            self._bytes -= self._rows.pop(key).nbytes
        self._rows[key] = rows
        self._bytes += rows.nbytes
        while self._bytes > self._max_bytes:
            _, evicted = self._rows.popitem(last=False)
            self._bytes -= evicted.nbytes
        metrics.EMBEDDING_CACHE_BYTES.set(self._bytes)


class MediaLibrary:
    def __init__(self, store: SessionStore, vision: VisionBackend | None, audio: AudioBackend | None,
                 cache_bytes: int = 256 * 1024 * 1024):
        self._store = store
        self._vision = vision
        self._audio = audio
        self._cache = EmbeddingCache(cache_bytes)

    @property
    def vision_enabled(self) -> bool:
        return self._vision is not None

    async def encode(self, tenant: str, ids: CallIds, requests: list[MediaRequest],
                     timings: list[StageTime] | None = None) -> list[tuple[MediaPiece, MediaRef]]:
        """Encodes a turn's media concurrently; stores each blob for a later re-encode. The stage timings
        the vision and audio services return are appended to `timings` (the turn's stage breakdown)."""
        return list(await asyncio.gather(*(self._encode_one(tenant, ids, r, timings) for r in requests)))

    async def _encode_one(self, tenant: str, ids: CallIds, request: MediaRequest,
                          timings: list[StageTime] | None) -> tuple[MediaPiece, MediaRef]:
        blob = request.blob()
        key = content_id(request.kind, blob, request.max_tiles if request.kind == "image" else 0)
        rows = self._cache.get(key)
        if rows is None:
            encoded = await self._run_encoder(ids, request)
            if timings is not None:
                timings.extend(encoded.timings)
            rows = encoded.rows
            self._cache.put(key, rows)
        blob_key = await self._store.put_blob(tenant, key, blob, session_id=ids.session_id)
        kind = "video" if request.kind == "frames" else request.kind
        ref = MediaRef(kind=kind, content_id=key, num_rows=rows.num_rows, blob_key=blob_key,
                       max_tiles=request.max_tiles, source=request.kind)
        return MediaPiece(key, rows.num_rows, rows), ref

    async def _run_encoder(self, ids: CallIds, request: MediaRequest) -> EncodedMedia:
        if request.kind == "audio":
            if self._audio is None:
                raise MediaRejected("FAILED_PRECONDITION", "audio input is not served by this deployment")
            return await self._audio.encode_clip(ids, request.data)
        if self._vision is None:
            raise MediaRejected("FAILED_PRECONDITION", "images and video are not served by this deployment")
        if request.kind == "image":
            return await self._vision.encode_image(ids, request.data, request.max_tiles)
        if request.kind == "video":
            return await self._vision.encode_video(ids, request.data)
        return await self._vision.encode_frames(ids, list(request.frames))

    def remember(self, piece: MediaPiece) -> None:
        """Rows produced elsewhere (a streamed utterance) become restorable too."""
        if piece.rows is not None:
            self._cache.put(piece.content_id, piece.rows)

    async def restore(self, ids: CallIds, prompt: list[PromptPiece], refs: dict[str, MediaRef],
                      timings: list[StageTime] | None = None) -> list[PromptPiece]:
        """Fills in the rows of every media span the LLM no longer holds in its cache; re-encodes add
        their stage timings to `timings`, as `encode` does."""
        restored = []
        for piece in prompt:
            if isinstance(piece, MediaPiece) and piece.rows is None:
                rows = self._cache.get(piece.content_id)
                if rows is None:
                    rows = await self._reencode(ids, refs[piece.content_id], timings)
                    self._cache.put(piece.content_id, rows)
                piece = MediaPiece(piece.content_id, piece.num_rows, rows)
            restored.append(piece)
        return restored

    async def _reencode(self, ids: CallIds, ref: MediaRef, timings: list[StageTime] | None) -> WireTensor:
        blob = await self._store.get_blob(ref.blob_key) if ref.blob_key else None
        if blob is None:
            raise BackendError("FAILED_PRECONDITION",
                               "a past image, video or audio clip of this session has expired; start a new session")
        request = MediaRequest(kind=ref.source, max_tiles=ref.max_tiles)
        if ref.source == "frames":
            request = MediaRequest(kind="frames", frames=MediaRequest.frames_from_blob(blob))
        else:
            request = MediaRequest(kind=ref.source, data=blob, max_tiles=ref.max_tiles)
        encoded = await self._run_encoder(ids, request)
        if timings is not None:
            timings.extend(encoded.timings)
        rows = encoded.rows
        if rows.num_rows != ref.num_rows:
            raise BackendError("INTERNAL", "re-encoding a past media item gave a different length")
        return rows
