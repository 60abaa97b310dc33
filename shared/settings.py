"""Typed settings, parsed once at start-up so that a bad value fails there, not mid-call: one settings
class per service, each with its own environment prefix (VITA_LLM_, VITA_SPEECH_, ...), plus
VITA_-prefixed settings every service shares.
Nothing reads the environment at import time: each service's entry point builds its settings once.

A service has two settings objects: `ServiceSettings` (VITA_*, shared by all services: preset, device,
checkpoint...) and its own (VITA_LLM_*, VITA_SPEECH_*, ...) for its engine knobs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class ServiceSettings(BaseSettings):
    """What every gRPC service process needs."""

    model_config = SettingsConfigDict(env_prefix="VITA_", extra="ignore")

    host: str = "127.0.0.1"
    # 0 = pick a free port; the bound port is announced on stdout (see shared.grpc_server).
    port: int = 0
    # Prometheus /metrics HTTP port; 0 = pick a free port, -1 = no metrics endpoint.
    metrics_port: int = 0
    preset: Literal["tiny", "full"] = "tiny"
    # Official VITA-1.5 checkpoint directory; unset = seeded random weights of the preset.
    checkpoint: Path | None = None
    # "auto" = cuda if available, else cpu.
    device: str = "auto"
    # "auto" = bfloat16 on CUDA, float32 on CPU.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Largest gRPC message accepted or sent, in bytes. Set on purpose: media embeddings are chunked below it.
    max_message_bytes: int = 64 * MiB
    # Seconds in-flight calls get to finish after SIGTERM before they are cancelled.
    drain_seconds: float = 10.0
    # Torch intra-op threads; 0 = torch's default.
    torch_threads: int = 0
    # OTLP endpoint for traces, e.g. http://otel-collector:4317; unset = tracing off.
    otlp_endpoint: str | None = None
    log_level: str = "INFO"
    # "json": one JSON object per log line with trace, session and turn ids (shared/json_logs.py).
    log_format: Literal["text", "json"] = "text"
    # Set by the local launcher (`vita up`): the service exits when that process dies.
    parent_pid: int = 0
    # HTTP/2 keepalive of every channel and server (shared/keepalive.py): clients ping idle connections
    # this often (ms) and servers accept pings down to a third of it. Set it the same on every process.
    keepalive_time_ms: int = 30_000
    # A ping not answered in this long (ms) closes the connection.
    keepalive_timeout_ms: int = 20_000
    # TLS (shared/tls.py, docs/DEPLOY.md#tls), PEM files. tls_cert + tls_key: this server serves TLS.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # The internal CA: channels this process opens use TLS and verify servers against it, and with
    # tls_client_auth this server requires client certificates it signed (mTLS).
    tls_ca: Path | None = None
    tls_client_auth: bool = False
    # The client certificate this process presents on its channels; unset = tls_cert / tls_key.
    tls_client_cert: Path | None = None
    tls_client_key: Path | None = None

    @model_validator(mode="after")
    def _tls_files_pair_up(self) -> "ServiceSettings":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("VITA_TLS_CERT and VITA_TLS_KEY must be set together")
        if (self.tls_client_cert is None) != (self.tls_client_key is None):
            raise ValueError("VITA_TLS_CLIENT_CERT and VITA_TLS_CLIENT_KEY must be set together")
        if self.tls_client_auth and (self.tls_ca is None or self.tls_cert is None):
            raise ValueError("VITA_TLS_CLIENT_AUTH needs VITA_TLS_CA (the clients' CA) and VITA_TLS_CERT/VITA_TLS_KEY")
        return self


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def resolve_dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


__all__ = ["ServiceSettings", "MiB", "resolve_device", "resolve_dtype"]
