"""`python -m shared.healthcheck [ADDRESS] [--service NAME] [--timeout S]`: exits 0 when the gRPC service at
ADDRESS reports SERVING on the standard health protocol, 1 otherwise.

The container healthcheck (Dockerfile, docker-compose.yml). ADDRESS defaults to 127.0.0.1:$VITA_PORT, the
port the service in this container binds. Kubernetes uses its built-in `grpc:` probes instead.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared import tls
from shared.settings import ServiceSettings


def check(address: str, service: str = "", timeout_s: float = 3.0, credentials: grpc.ChannelCredentials | None = None) -> str:
    """The status name (SERVING, NOT_SERVING, ...), or the gRPC error code name if the call failed.
    `credentials`: for a server with TLS (shared.tls); None = plaintext."""
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as error:
            return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.healthcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("address", nargs="?", default=f"127.0.0.1:{os.environ.get('VITA_PORT', '50051')}")
    parser.add_argument("--service", default="", help="a service name; empty = the whole server")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds")
    args = parser.parse_args(argv)
    # In a container with VITA_TLS_* set, the service serves TLS: ask with the credentials its channels use.
    status = check(args.address, args.service, args.timeout, tls.channel_credentials(ServiceSettings()))
    print(f"{args.address}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
