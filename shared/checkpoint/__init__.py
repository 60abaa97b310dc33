"""Official VITA-1.5 checkpoints: where the files are (`layout`), how they are read (`files`), the dims they
describe (`dims`) and strict key mapping (`strict`). Each service's own mapping lives in
`services/<service>/checkpoint.py`; the tools `vita checkpoint inspect|synth` live in `apps/checkpoint/`."""

from shared.checkpoint.errors import CheckpointError

__all__ = ["CheckpointError"]
