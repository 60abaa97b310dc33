"""Vision service settings (VITA_VISION_*); shared settings come from `shared.settings.ServiceSettings`."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.vision.images import MAX_TILES_LIMIT, ImageLimits
from services.vision.video import VideoLimits
from shared.settings import MiB


class VisionSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VITA_VISION_", extra="ignore")

    # Tiles (or video frames) encoded together in one engine step, across concurrent requests.
    max_batch_size: int = Field(default=8, ge=1)
    # Largest `max_tiles` a request may ask for (the thumbnail is extra); the reference allows up to 12.
    max_tiles_limit: int = Field(default=MAX_TILES_LIMIT, ge=1, le=MAX_TILES_LIMIT)
    # Image (and camera frame) limits. Bytes are checked first, pixels from the header before decoding,
    # so a decompression bomb costs a few KB of work. Keep max_image_bytes below the gRPC message limit
    # (VITA_MAX_MESSAGE_BYTES, 64 MiB) so that users see this limit named rather than a transport error.
    max_image_bytes: int = Field(default=32 * MiB, ge=1)
    max_image_pixels: int = Field(default=50_000_000, ge=1)
    # Longest side : shortest side; tiling honours at most 12:1, so beyond this the picture is noise.
    max_aspect_ratio: float = Field(default=200.0, ge=1.0)
    # A video travels in one request, so it can never exceed the gRPC message limit anyway.
    max_video_bytes: int = Field(default=48 * MiB, ge=1)
    # Forward-decoded frames per sampled frame before settling for the latest one (sparse keyframes).
    max_decode_frames_per_sample: int = Field(default=1024, ge=1)
    # Camera frames accepted in one EncodeFrames call (at most 16 are sampled; the rest only cost bytes).
    max_camera_frames: int = Field(default=64, ge=1)
    # Decodes (PIL / PyAV, in worker threads) run at once: bounds the memory of decoded pictures.
    max_concurrent_decodes: int = Field(default=4, ge=1)
    # Requests admitted at once (decoding, waiting for a decode thread, or encoding). One more is refused
    # with RESOURCE_EXHAUSTED and a `retry-after-ms` of busy_retry_after_ms (the orchestrator then tries
    # another replica): a flood of pictures gets a fast answer instead of a queue without end.
    max_requests_in_flight: int = Field(default=64, ge=1)
    busy_retry_after_ms: int = Field(default=500, ge=1)

    def image_limits(self) -> ImageLimits:
        return ImageLimits(
            max_bytes=self.max_image_bytes,
            max_pixels=self.max_image_pixels,
            max_aspect_ratio=self.max_aspect_ratio,
        )

    def video_limits(self) -> VideoLimits:
        return VideoLimits(
            max_bytes=self.max_video_bytes,
            frame=self.image_limits(),
            max_decode_frames_per_sample=self.max_decode_frames_per_sample,
        )
