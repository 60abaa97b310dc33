"""Official VITA-1.5 checkpoints: where the files are (`layout`), how they are read (`files`), the dims they
describe (`dims`), strict key mapping (`strict`), and the tools `vita checkpoint inspect|synth`
(`inspect`, `synth`). Each service's own mapping lives in `services/<service>/checkpoint.py`."""

from shared.checkpoint.errors import CheckpointError

__all__ = ["CheckpointError"]
