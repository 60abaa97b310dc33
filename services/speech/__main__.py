"""`python -m services.speech` / `vita serve speech`."""

import asyncio

from services.speech.config import SpeechSettings
from services.speech.server import SpeechApp
from shared.grpc_server import configure_logging, serve
from shared.settings import ServiceSettings


def main(**overrides) -> None:
    common = ServiceSettings(**overrides)
    configure_logging(common.log_level)
    asyncio.run(serve(SpeechApp(common, SpeechSettings()), common))


if __name__ == "__main__":
    main()
