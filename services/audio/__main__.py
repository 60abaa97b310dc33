"""`python -m services.audio` / `vita serve audio`."""

import asyncio

from services.audio.config import AudioSettings
from services.audio.server import AudioApp
from shared.grpc_server import configure_logging, serve
from shared.settings import ServiceSettings


def main(**overrides) -> None:
    common = ServiceSettings(**overrides)
    configure_logging(common.log_level)
    asyncio.run(serve(AudioApp(common, AudioSettings()), common))


if __name__ == "__main__":
    main()
