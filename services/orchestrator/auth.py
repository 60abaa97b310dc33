"""API keys → tenants. With keys configured every call needs `authorization: Bearer <key>`; without, every
caller is the tenant "local" (the local default, announced at start)."""

from __future__ import annotations

import hmac

import grpc

LOCAL_TENANT = "local"


class ApiKeys:
    def __init__(self, spec: str):
        """`spec` = "key1=tenant1,key2=tenant2"."""
        self._tenants: dict[str, str] = {}
        for entry in filter(None, (part.strip() for part in spec.split(","))):
            key, sep, tenant = entry.partition("=")
            if not sep or not key or not tenant:
                raise ValueError("API keys must be given as key=tenant pairs separated by commas")
            self._tenants[key] = tenant

    @property
    def enabled(self) -> bool:
        return bool(self._tenants)

    def tenant_for(self, metadata) -> str | None:
        """The caller's tenant, or None when the key is missing or unknown."""
        if not self.enabled:
            return LOCAL_TENANT
        header = dict(metadata or ()).get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        for key, tenant in self._tenants.items():
            if hmac.compare_digest(key.encode(), token.strip().encode()):
                return tenant
        return None

    async def require(self, context: grpc.aio.ServicerContext) -> str:
        tenant = self.tenant_for(context.invocation_metadata())
        if tenant is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown API key (authorization: Bearer <key>)")
        return tenant
