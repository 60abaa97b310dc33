"""What every gRPC backend of the orchestrator shares: call context, error mapping, connecting, and a base
that holds a service's replicas and deadlines and retries a call once on another replica."""

from __future__ import annotations

import asyncio
import logging
import re
from contextlib import contextmanager
from typing import Awaitable, Callable, TypeVar

import grpc

from services.orchestrator.backends import BackendError, CallIds, StageTime
from services.orchestrator.deadlines import CallDeadlines, deadline_error
from services.orchestrator.replicas import Replica, Replicas
from shared.retry_hint import retry_after_ms
from vita.common.v1 import common_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")

# Failures that leave nothing behind on the replica: the call may go to another one.
RETRYABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})
# Writing to a call that has already ended raises one of these; its status arrives on the read side.
WRITE_AFTER_END = (asyncio.InvalidStateError, grpc.aio.UsageError)


def call_context(ids: CallIds) -> common_pb2.CallContext:
    ctx = common_pb2.CallContext(session_id=ids.session_id, turn_id=ids.turn_id)
    if ids.seed is not None:
        ctx.seed = ids.seed
    return ctx


def reason_name(enum_type, value: int) -> str:
    """A reason enum as the lowercase word the backends use: FinishReason STOP → "stop"."""
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum_type.DESCRIPTOR.name).upper() + "_"
    return enum_type.Name(value).removeprefix(prefix).lower()


def stage_times(timings) -> tuple[StageTime, ...]:
    return tuple(StageTime(t.stage, t.queue_ns, t.compute_ns) for t in timings)


def backend_error(service: str, error: grpc.aio.AioRpcError, stage: str | None = None,
                  timeout_s: float | None = None) -> BackendError:
    code = error.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        if stage is not None and timeout_s is not None:
            return deadline_error(service, f"did not finish {stage}", timeout_s)
        return BackendError("DEADLINE_EXCEEDED", f"the {service} service did not answer in time; try again shortly")
    if code == grpc.StatusCode.UNAVAILABLE:
        return BackendError("UNAVAILABLE", f"the {service} service is unavailable; try again shortly")
    if code == grpc.StatusCode.INTERNAL:
        # Internal details stay in the service's log; the client gets a message it can act on.
        return BackendError("INTERNAL", f"the {service} service failed")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        retry_ms = retry_after_ms(error.trailing_metadata())
        hint = f"; retry in {retry_ms} ms" if retry_ms else ""
        return BackendError("RESOURCE_EXHAUSTED", f"the {service} service is at capacity{hint}")
    return BackendError(code.name, error.details() or f"{service} call failed")


@contextmanager
def rpc_errors(service: str, stage: str | None = None, timeout_s: float | None = None):
    """A failed call to a model service becomes a BackendError the turn can report."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise backend_error(service, error, stage, timeout_s) from None


async def wait_connected(channel: grpc.aio.Channel, service: str, timeout_s: float) -> None:
    """Fails fast with UNAVAILABLE instead of letting a call hang on a dead address."""
    try:
        await asyncio.wait_for(channel.channel_ready(), timeout_s)
    except asyncio.TimeoutError:
        raise BackendError("UNAVAILABLE", f"the {service} service is unavailable; try again shortly") from None


def as_replicas(service: str, source: Replicas | grpc.aio.Channel) -> Replicas:
    return source if isinstance(source, Replicas) else Replicas(service, [Replica(service, source)], retry=False)


def as_deadlines(source: CallDeadlines | float) -> CallDeadlines:
    return source if isinstance(source, CallDeadlines) else CallDeadlines(connect_s=float(source))


class GrpcBackend:
    """One model service: its replicas, a stub per replica, deadlines, and retry on another replica."""

    service = ""
    stub_class: type = object

    def __init__(self, replicas: Replicas | grpc.aio.Channel, deadlines: CallDeadlines | float):
        self._replicas = as_replicas(self.service, replicas)
        self._deadlines = as_deadlines(deadlines)

    async def _connected(self, replica: Replica):
        await wait_connected(replica.channel, self.service, self._deadlines.connect_s)
        return replica.stub(self.stub_class)

    async def _attempts(self, key: str | None = None) -> list[Replica]:
        """The replicas a call tries, in order (services/orchestrator/replicas.py); a DNS address is
        resolved first."""
        await self._replicas.ready()
        return self._replicas.attempts(key)

    async def _call(self, attempt: Callable[[Replica], Awaitable[T]], key: str | None = None) -> T:
        """`attempt` on the first replica; once more on another one if it failed retryably."""
        attempts = await self._attempts(key)
        for index, replica in enumerate(attempts):
            try:
                with replica.busy():
                    return await attempt(replica)
            except BackendError as error:
                if index + 1 == len(attempts) or error.code not in RETRYABLE:
                    raise
                log.warning("%s call to %s failed (%s); retrying on %s", self.service, replica.target, error.code,
                            attempts[index + 1].target)
        raise AssertionError("unreachable: attempts is never empty")


