"""`python -m services.orchestrator` / `vita serve orchestrator`."""

import asyncio

from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.server import OrchestratorApp
from shared.grpc_server import configure_logging, serve
from shared.settings import ServiceSettings


def main(**overrides) -> None:
    common = ServiceSettings(**overrides)
    configure_logging(common.log_level)
    asyncio.run(serve(OrchestratorApp(common, OrchestratorSettings()), common))


if __name__ == "__main__":
    main()
