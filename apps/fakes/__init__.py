"""Fake model services for capacity planning and orchestrator tests.

Each fake serves the same gRPC service as the real one (vita.llm.v1.LLM, vita.speech.v1.Speech,
vita.audio.v1.Audio, vita.vision.v1.Vision) with the same health, reflection, /metrics and READY
announcement (shared.grpc_server.serve), so the orchestrator cannot tell it from the real thing. No torch,
no model: every stage takes a configured time (apps/fakes/config.py), so a load test measures the
orchestrator and Redis, not the models, and a capacity plan can plug in any GPU's per-stage figures.

Run one with `python -m apps.fakes llm` (or speech, audio, vision).
"""
