"""`python -m services.llm` / `vita serve llm`."""

import asyncio

from services.llm.config import LLMSettings
from services.llm.server import LLMApp
from shared.grpc_server import configure_logging, serve
from shared.settings import ServiceSettings


def main(**overrides) -> None:
    common = ServiceSettings(**overrides)
    configure_logging(common.log_level)
    asyncio.run(serve(LLMApp(common, LLMSettings()), common))


if __name__ == "__main__":
    main()
