"""Regenerates the committed Python stubs beside the .proto files: `python scripts/gen_protos.py`.

The stubs are committed (not built at install) so that a plain `pip install` needs no protoc;
`tests/test_protos.py` fails when they drift from the .proto sources.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent / "protos"


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc

    sources = sorted(PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(s.relative_to(PROTO_ROOT)) for s in sources),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    return sources


if __name__ == "__main__":
    generate(PROTO_ROOT)
    sys.exit(0)
