"""Checkpoint tools: `vita checkpoint inspect` (what each service would load, checked by the services' own
loaders) and `vita checkpoint synth` (seeded random weights written in the official layout)."""
