"""TLS for real: a CA made here signs the services' certificate; the model services require client
certificates (mTLS), the orchestrator's public API serves TLS, and a turn goes through all of it. Clients
that lack the CA, or a client certificate where one is required, are refused."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import sdk
from apps.launcher import Stack, StackConfig
from shared import healthcheck, tls
from shared.settings import ServiceSettings

QUIET = sdk.SessionConfig(max_reply_tokens=6, speech_output=True, seed=1)
NO_RECONNECT = None

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl CLI makes the test CA")

# A leaf for loopback, good as a server and as a client certificate.
LEAF_EXTENSIONS = """subjectAltName = DNS:localhost, IP:127.0.0.1
extendedKeyUsage = serverAuth, clientAuth
basicConstraints = CA:FALSE
"""


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(path: Path, common_name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(path.with_suffix(".key")), "-out", str(path.with_suffix(".crt")),
             "-days", "1", "-subj", f"/CN={common_name}")


def issue(path: Path, ca: Path, common_name: str) -> tuple[Path, Path]:
    key, csr, cert = path.with_suffix(".key"), path.with_suffix(".csr"), path.with_suffix(".crt")
    extensions = path.with_suffix(".ext")
    extensions.write_text(LEAF_EXTENSIONS)
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={common_name}")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.with_suffix(".crt")), "-CAkey", str(ca.with_suffix(".key")),
             "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(extensions))
    return cert, key


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    rogue_cert: Path  # signed by another CA
    rogue_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    make_ca(root / "ca", "vita test CA")
    cert, key = issue(root / "service", root / "ca", "vita service")
    make_ca(root / "rogue-ca", "another CA")
    rogue_cert, rogue_key = issue(root / "rogue", root / "rogue-ca", "rogue client")
    return Pki(root / "ca.crt", cert, key, rogue_cert, rogue_key)


@pytest.fixture(scope="module")
def tls_stack(pki, tmp_path_factory):
    """LLM + speech with mTLS; the orchestrator calls them with its client certificate."""
    env = {
        "VITA_TLS_CERT": str(pki.cert), "VITA_TLS_KEY": str(pki.key), "VITA_TLS_CA": str(pki.ca),
        "VITA_TLS_CLIENT_AUTH": "true",
    }
    config = StackConfig(services=("llm", "speech"), env=env, log_dir=tmp_path_factory.mktemp("tls-logs"))
    with Stack(config) as stack:
        # The public API: TLS without client certificates, as clients on the internet reach it.
        public = stack.spawn_orchestrator({"VITA_TLS_CLIENT_AUTH": "false"})
        try:
            yield stack, public
        finally:
            public.stop(10)


async def test_a_turn_over_public_tls_and_internal_mtls(tls_stack, pki):
    _, public = tls_stack
    async with sdk.AsyncClient(public.address, credentials=sdk.tls_credentials(pki.ca)) as client:
        async with await client.start(QUIET, reconnect=NO_RECONNECT) as conv:
            reply = await conv.ask("Hello over TLS.", timeout=60)
        assert reply.outcome == "completed" and reply.text and reply.pcm
        history = (await client.get_session(conv.session_id)).history
        assert [t.user_text for t in history] == ["Hello over TLS."]


async def test_a_public_api_with_client_auth_takes_a_client_certificate(tls_stack, pki):
    stack, _ = tls_stack  # the launcher's orchestrator has VITA_TLS_CLIENT_AUTH like the services
    credentials = sdk.tls_credentials(pki.ca, pki.cert, pki.key)
    async with sdk.AsyncClient(stack.address, credentials=credentials) as client:
        session = await client.create_session(QUIET)
        assert (await client.get_session(session.session_id)).session_id == session.session_id


@pytest.mark.parametrize("credentials", ["plaintext", "system roots"])
async def test_a_client_without_the_ca_is_refused_with_unavailable(tls_stack, credentials):
    _, public = tls_stack
    creds = None if credentials == "plaintext" else grpc.ssl_channel_credentials()
    async with sdk.AsyncClient(public.address, credentials=creds) as client:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(client.create_session(QUIET), 30)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def _health(address: str, credentials: grpc.ChannelCredentials) -> grpc.StatusCode | int:
    with grpc.secure_channel(address, credentials) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.RpcError as error:
            return error.code()
    return reply.status


@pytest.mark.parametrize("client_cert", ["none", "another CA's"])
async def test_a_model_service_refuses_a_client_without_a_valid_client_certificate(tls_stack, pki, client_cert):
    stack, _ = tls_stack
    llm = stack.services["llm"].address
    if client_cert == "none":
        credentials = tls.credentials_from_files(pki.ca)
    else:
        credentials = tls.credentials_from_files(pki.ca, pki.rogue_cert, pki.rogue_key)
    assert await asyncio.to_thread(_health, llm, credentials) == grpc.StatusCode.UNAVAILABLE
    # The same server answers the orchestrator's certificate.
    good = tls.credentials_from_files(pki.ca, pki.cert, pki.key)
    assert await asyncio.to_thread(_health, llm, good) == health_pb2.HealthCheckResponse.SERVING
    # The container healthcheck takes the same credentials.
    assert await asyncio.to_thread(healthcheck.check, llm, "", 10.0, good) == "SERVING"


def test_tls_settings_that_cannot_work_fail_at_start(pki, tmp_path):
    with pytest.raises(ValueError, match="VITA_TLS_CERT and VITA_TLS_KEY"):
        ServiceSettings(tls_cert=pki.cert)
    with pytest.raises(ValueError, match="VITA_TLS_CLIENT_AUTH"):
        ServiceSettings(tls_cert=pki.cert, tls_key=pki.key, tls_client_auth=True)
    missing = ServiceSettings(tls_cert=tmp_path / "nope.crt", tls_key=pki.key)
    with pytest.raises(tls.TlsConfigError, match="nope.crt"):
        tls.server_credentials(missing)
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(tls.TlsConfigError, match="not a PEM"):
        tls.channel_credentials(ServiceSettings(tls_ca=tmp_path / "junk.pem"))
    assert tls.server_credentials(ServiceSettings()) is None and tls.channel_credentials(ServiceSettings()) is None
