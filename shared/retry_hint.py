"""RESOURCE_EXHAUSTED (or UNAVAILABLE) with a retry hint: every bounded queue of the stack refuses this way,
and so does a store that is failing over.

The hint travels as the trailing metadata `retry-after-ms` (milliseconds, a decimal string) and is also
written into the status message, so that a client without metadata access can still act on it.
"""

from __future__ import annotations

import grpc

RETRY_AFTER_KEY = "retry-after-ms"


async def abort_with_retry(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str,
                           retry_after_ms: int) -> None:
    """Ends the call with `code`, `message` and the retry hint (never returns)."""
    context.set_trailing_metadata(((RETRY_AFTER_KEY, str(int(retry_after_ms))),))
    await context.abort(code, message)


async def abort_exhausted(context: grpc.aio.ServicerContext, message: str, retry_after_ms: int) -> None:
    """Ends the call with RESOURCE_EXHAUSTED, `message` and the retry hint (never returns)."""
    await abort_with_retry(context, grpc.StatusCode.RESOURCE_EXHAUSTED, message, retry_after_ms)


def retry_after_ms(metadata) -> int | None:
    """The hint in a call's trailing metadata, None when absent or malformed."""
    for key, value in metadata or ():
        if key == RETRY_AFTER_KEY:
            try:
                return max(0, int(value))
            except (TypeError, ValueError):
                return None
    return None
