"""The OpenAI-compatible gateway (`vita serve gateway`): the Realtime WebSocket (`/v1/realtime`), chat
completions with audio (`/v1/chat/completions`), `/v1/models`, `/healthz`, `/metrics` and the browser page,
over HTTP on its own process. It reaches the orchestrator only through the client SDK (sdk/), with the
caller's own API key, so the gRPC API's keys are the gateway's keys. See docs/GATEWAY.md."""
