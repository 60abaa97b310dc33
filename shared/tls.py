"""TLS for every gRPC server and channel, from PEM files named in settings (VITA_TLS_*).

One internal PKI is assumed: a CA (`tls_ca`) signs every service's certificate. A server with `tls_cert`
and `tls_key` serves TLS; with `tls_client_auth` it also requires a client certificate signed by
`tls_ca` (mTLS, for the model services, which only the orchestrator calls). A process that calls other
services (the orchestrator) uses TLS on those channels once `tls_ca` is set, verifies the servers against
it, and presents `tls_client_cert`/`tls_client_key` (default: its own `tls_cert`/`tls_key`) as its client
certificate.

Files are read once at start-up: a missing or unreadable file fails the start with its path, not the
first call. Certificates must name the address clients dial (a DNS name or an IP address in the
subjectAltName), since gRPC checks the host name.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from shared.settings import ServiceSettings


class TlsConfigError(ValueError):
    """A TLS file named in settings cannot be used (missing, unreadable, not PEM)."""


def read_pem(path: Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise TlsConfigError(f"cannot read the TLS {what} {path}: {error.strerror}") from None
    if b"-----BEGIN " not in data:
        raise TlsConfigError(f"the TLS {what} {path} is not a PEM file")
    return data


def serves_tls(settings: ServiceSettings) -> bool:
    return settings.tls_cert is not None


def server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials | None:
    """This server's credentials; None = plaintext."""
    if not serves_tls(settings):
        return None
    chain = read_pem(settings.tls_cert, "certificate")
    key = read_pem(settings.tls_key, "private key")
    client_ca = read_pem(settings.tls_ca, "CA certificate") if settings.tls_client_auth else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=settings.tls_client_auth
    )


def add_port(server: grpc.aio.Server, address: str, settings: ServiceSettings) -> int:
    """Binds `address` with TLS when settings ask for it; returns the bound port (0 = failed)."""
    credentials = server_credentials(settings)
    if credentials is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, credentials)


def credentials_from_files(ca: Path | None, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    """Channel credentials: `ca` verifies the server (None = the system's roots); `cert` + `key` are the
    client certificate for servers that require one."""
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca, "CA certificate") if ca is not None else None,
        private_key=read_pem(key, "private key") if key is not None else None,
        certificate_chain=read_pem(cert, "certificate") if cert is not None else None,
    )


def channel_credentials(settings: ServiceSettings) -> grpc.ChannelCredentials | None:
    """Credentials for the channels this process opens to other services; None = plaintext."""
    if settings.tls_ca is None:
        return None
    cert = settings.tls_client_cert or settings.tls_cert
    key = settings.tls_client_key or settings.tls_key
    return credentials_from_files(settings.tls_ca, cert, key)


TLS_ENV = {
    "tls_cert": "VITA_TLS_CERT",
    "tls_key": "VITA_TLS_KEY",
    "tls_ca": "VITA_TLS_CA",
    "tls_client_auth": "VITA_TLS_CLIENT_AUTH",
    "tls_client_cert": "VITA_TLS_CLIENT_CERT",
    "tls_client_key": "VITA_TLS_CLIENT_KEY",
}


def probe_credentials(env: dict[str, str]) -> grpc.ChannelCredentials | None:
    """What a launcher needs to ask health of a process it starts with environment `env`: the same
    credentials that process would use on its own channels."""
    values = {name: env[var] for name, var in TLS_ENV.items() if env.get(var)}
    return channel_credentials(ServiceSettings(**values)) if values else None


__all__ = [
    "TlsConfigError", "add_port", "channel_credentials", "credentials_from_files", "probe_credentials",
    "server_credentials", "serves_tls",
]
