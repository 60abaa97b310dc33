"""Gateway settings (VITA_GATEWAY_*), parsed once at start-up."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VITA_GATEWAY_", extra="ignore")

    # The orchestrator's public gRPC API, as the SDK dials it ("host:port" or a gRPC target).
    orchestrator: str = "127.0.0.1:50051"
    # The model id `GET /v1/models` lists; requests may name any model (there is one).
    model_name: str = "vita-1.5"
    # Largest WebSocket message the realtime endpoint reads, in bytes. A bigger one gets an error event
    # and the connection is closed (1009). OpenAI's own limit for one audio append is 15 MiB.
    max_event_bytes: int = Field(16 * MiB, ge=1024)
    # Largest chat completions request body, in bytes (413 above it).
    max_request_bytes: int = Field(32 * MiB, ge=1024)
    # Input audio a realtime session holds before a manual commit (turn_detection none), in seconds.
    max_buffered_audio_s: float = Field(300.0, gt=0)
    # Images per turn the gateway keeps pending; older ones are dropped (the orchestrator takes at most 4).
    max_pending_images: int = Field(4, ge=1)
    # Chat completions may name http(s) image URLs, fetched by the gateway. Off: only data: URLs, so the
    # gateway is no open proxy into the network it runs in.
    allow_remote_images: bool = False
    remote_image_timeout_s: float = Field(10.0, gt=0)
    # A chat completion that has not finished in this long fails with 504.
    completion_timeout_s: float = Field(300.0, gt=0)
    # Connections (AsyncClient channels) kept to the orchestrator, one per API key in use.
    max_clients: int = Field(64, ge=1)
    # HTTPS for the gateway itself (PEM files; a browser needs https for the microphone anywhere but
    # localhost). Unset: plain HTTP, for a TLS-terminating proxy in front or local use.
    https_cert: Path | None = None
    https_key: Path | None = None

    @model_validator(mode="after")
    def _https_files_pair_up(self) -> "GatewaySettings":
        if (self.https_cert is None) != (self.https_key is None):
            raise ValueError("VITA_GATEWAY_HTTPS_CERT and VITA_GATEWAY_HTTPS_KEY must be set together")
        return self
