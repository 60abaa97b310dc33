"""The one exception a service raises when a checkpoint cannot be served as it is."""

from __future__ import annotations

from pathlib import Path


class CheckpointError(RuntimeError):
    """A checkpoint file, a key in it, and what is wrong: raised at start-up, before anything is served.

    `path` is the file (or directory) at fault, `key` the tensor or config key (None when the whole file is
    at fault), `problem` a sentence an operator can act on.
    """

    def __init__(self, path: Path | str | None, key: str | None, problem: str):
        self.path = Path(path) if path is not None else None
        self.key = key
        self.problem = problem
        super().__init__(self._message())

    def _message(self) -> str:
        where = str(self.path) if self.path is not None else "checkpoint"
        if self.key is not None:
            where = f"{where}: {self.key}"
        return f"{where}: {self.problem}"

    def __reduce__(self):  # keeps the three fields across pickling (process pools, test runners)
        return (type(self), (self.path, self.key, self.problem))
