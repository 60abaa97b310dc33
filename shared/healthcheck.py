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


def check(address: str, service: str = "", timeout_s: float = 3.0) -> str:
    """The status name (SERVING, NOT_SERVING, ...), or the gRPC error code name if the call failed."""
    with grpc.insecure_channel(address) as channel:
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
    status = check(args.address, args.service, args.timeout)
    print(f"{args.address}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
