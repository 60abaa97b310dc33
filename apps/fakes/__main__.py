"""`python -m apps.fakes <llm|speech|audio|vision>`: one fake model service, configured by VITA_* (host,
port, preset, ...) like the real one and by VITA_FAKE_* (apps/fakes/config.py) for its per-stage costs."""

from __future__ import annotations

import asyncio
import sys

from apps.fakes.app import FAKES, FakeApp
from apps.fakes.config import FakeSettings
from shared.grpc_server import configure_logging, serve
from shared.settings import ServiceSettings


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in FAKES:
        print(f"usage: python -m apps.fakes {{{','.join(FAKES)}}}", file=sys.stderr)
        return 2
    common = ServiceSettings()
    configure_logging(common.log_level)
    asyncio.run(serve(FakeApp(args[0], common, FakeSettings()), common))
    return 0


if __name__ == "__main__":
    sys.exit(main())
