"""`python -m services.vision` / `vita serve vision`."""

import asyncio

from services.vision.config import VisionSettings
from services.vision.server import VisionApp
from shared.grpc_server import configure_logging, serve
from shared.settings import ServiceSettings


def main(**overrides) -> None:
    common = ServiceSettings(**overrides)
    configure_logging(common.log_level)
    asyncio.run(serve(VisionApp(common, VisionSettings()), common))


if __name__ == "__main__":
    main()
