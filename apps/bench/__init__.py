"""`vita bench`: N concurrent sessions replay scripted multi-turn conversations against the public API
(or the same models in one process, `--inprocess`) and report latency percentiles, playback underruns,
per-stage timings and throughput. See docs/PERFORMANCE.md.

Modules: `workload` (what is sent), `client_runner` / `inprocess_runner` (how, and when each event
arrived), `stats` (per-turn samples → percentiles), `report` (table + JSON), `plot`, `command` (CLI)."""
