"""The platform's Temporal client over mutual TLS: `temporal_tls` as every process uses it
(temporal_client.connect.connect), against a dev server behind a TLS-terminating proxy
that wants a client certificate. The dev server has no TLS of its own; the proxy does
what a production server (or its load balancer) does: it verifies the client's
certificate against the CA, offers h2 by ALPN as gRPC needs, and passes the bytes on."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from domain.config import Settings, TemporalTls
from temporal_client.connect import connect
from worker.stack import free_port

SERVER_NAME = "temporal.test"
CLIENT_NAME = "ainb-test-client"
# A refused connection must say so well within this (the client retries a little first).
FAIL_WITHIN_S = 20.0


# ----------------------------------------------------------------------- certificates


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    ext = directory / f"{name}.ext"
    ext.write_text(
        "basicConstraints=critical,CA:TRUE\n"
        "keyUsage=critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier=hash\n"
    )
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
    csr = directory / f"{name}.csr"
    _openssl("req", "-new", "-key", key, "-subj", f"/CN={name}", "-out", csr)
    _openssl(
        "x509", "-req", "-in", csr, "-signkey", key, "-days", "2",
        "-extfile", ext, "-out", cert,
    )  # fmt: skip
    return cert, key


def _make_leaf(
    directory: Path, name: str, ca: tuple[Path, Path], *, usage: str, san: str | None
) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    ext = directory / f"{name}.ext"
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature",
        f"extendedKeyUsage={usage}",
        "authorityKeyIdentifier=keyid",
    ]
    if san:
        lines.append(f"subjectAltName={san}")
    ext.write_text("\n".join(lines) + "\n")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
    csr = directory / f"{name}.csr"
    _openssl("req", "-new", "-key", key, "-subj", f"/CN={name}", "-out", csr)
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-set_serial",
        str(time.time_ns()), "-days", "2", "-extfile", ext, "-out", cert,
    )  # fmt: skip
    return cert, key


@dataclass
class Pki:
    ca: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]
    # Another CA, which signed neither the server's certificate nor the proxy trusts.
    other_ca: Path
    # A client certificate from that other CA.
    stranger: tuple[Path, Path]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    if not shutil.which("openssl"):
        pytest.skip("the openssl command is missing (it makes the test certificates)")
    d = tmp_path_factory.mktemp("pki")
    ca = _make_ca(d, "ainb-test-ca")
    other = _make_ca(d, "other-ca")
    return Pki(
        ca=ca[0],
        # The name only, no IP: the client dials 127.0.0.1 and must be told the name.
        server=_make_leaf(d, "server", ca, usage="serverAuth", san=f"DNS:{SERVER_NAME}"),
        client=_make_leaf(d, CLIENT_NAME, ca, usage="clientAuth", san=None),
        other_ca=other[0],
        stranger=_make_leaf(d, "stranger", other, usage="clientAuth", san=None),
    )


# ------------------------------------------------------------------------------ proxy


class TlsProxy:
    """TLS on a loopback port, requiring a client certificate of `ca`, spliced to a
    plain upstream port. Records the subject of each client it let through."""

    def __init__(self, upstream_port: int, cert: tuple[Path, Path], ca: Path) -> None:
        self.upstream_port = upstream_port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
        self.context.load_cert_chain(str(cert[0]), str(cert[1]))
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.set_alpn_protocols(["h2"])
        self.clients: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", 0, ssl=self.context, ssl_handshake_timeout=5
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Only a completed handshake gets here: the certificate was verified.
        peer = writer.get_extra_info("peercert") or {}
        subject = dict(pair for rdn in peer.get("subject", ()) for pair in rdn)
        self.clients.append(subject.get("commonName", ""))
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()  # TLS has no half-close: one side done ends both


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
async def dev_server_port() -> AsyncIterator[int]:
    path = shutil.which("temporal")
    assert path, "the temporal CLI is not installed: pip install -e ."
    port = free_port()
    async with await WorkflowEnvironment.start_local(
        dev_server_existing_path=path, ip="127.0.0.1", port=port
    ):
        yield port


@pytest.fixture(scope="module")
async def proxy(dev_server_port: int, pki: Pki) -> AsyncIterator[TlsProxy]:
    p = TlsProxy(dev_server_port, pki.server, pki.ca)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def _settings(proxy: TlsProxy, **tls: object) -> Settings:
    return Settings(temporal_address=f"127.0.0.1:{proxy.port}", temporal_tls=TemporalTls(**tls))


async def _refused(settings: Settings) -> BaseException:
    """Connect and make one call: it must fail, and in bounded time."""
    began = time.monotonic()
    with pytest.raises((RPCError, RuntimeError)) as err:
        async with asyncio.timeout(FAIL_WITHIN_S):
            client = await connect(settings)
            await client.service_client.check_health()
    assert time.monotonic() - began < FAIL_WITHIN_S
    return err.value


# ------------------------------------------------------------------------------ tests


@workflow.defn(sandboxed=False)
class Echo:
    @workflow.run
    async def run(self, text: str) -> str:
        return text


async def test_mutual_tls_connects_and_serves(proxy: TlsProxy, pki: Pki) -> None:
    settings = _settings(
        proxy,
        server_ca_file=pki.ca,
        client_cert_file=pki.client[0],
        client_key_file=pki.client[1],
        server_name=SERVER_NAME,
    )
    client = await asyncio.wait_for(connect(settings), FAIL_WITHIN_S)
    assert await client.service_client.check_health()
    # A worker's long polls and a workflow's round trip, as the control worker and the
    # host agents make them, over the same connection.
    queue = f"tls-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[Echo]):
        result = await asyncio.wait_for(
            client.execute_workflow(Echo.run, "over mTLS", id=queue, task_queue=queue),
            FAIL_WITHIN_S,
        )
    assert result == "over mTLS"
    described = await client.get_workflow_handle(queue).describe()
    assert described.status == WorkflowExecutionStatus.COMPLETED
    # It went through the proxy, with our client certificate.
    assert CLIENT_NAME in proxy.clients


async def test_without_a_client_certificate_the_server_refuses(proxy: TlsProxy, pki: Pki) -> None:
    before = len(proxy.clients)
    err = await _refused(_settings(proxy, server_ca_file=pki.ca, server_name=SERVER_NAME))
    assert len(proxy.clients) == before, f"a connection got through without a certificate: {err}"


async def test_a_client_certificate_of_another_ca_is_refused(proxy: TlsProxy, pki: Pki) -> None:
    before = len(proxy.clients)
    await _refused(
        _settings(
            proxy,
            server_ca_file=pki.ca,
            client_cert_file=pki.stranger[0],
            client_key_file=pki.stranger[1],
            server_name=SERVER_NAME,
        )
    )
    assert len(proxy.clients) == before


async def test_a_server_of_another_ca_is_not_trusted(proxy: TlsProxy, pki: Pki) -> None:
    before = len(proxy.clients)
    err = await _refused(
        _settings(
            proxy,
            server_ca_file=pki.other_ca,
            client_cert_file=pki.client[0],
            client_key_file=pki.client[1],
            server_name=SERVER_NAME,
        )
    )
    # The client's own check (rustls: InvalidCertificate(UnknownIssuer)).
    assert "certificate" in str(err).lower(), err
    assert len(proxy.clients) == before


async def test_an_ip_address_needs_the_certificates_name(proxy: TlsProxy, pki: Pki) -> None:
    # The certificate names temporal.test, not 127.0.0.1: without server_name the client
    # checks the certificate against the address it dials, and refuses it.
    before = len(proxy.clients)
    err = await _refused(
        _settings(
            proxy,
            server_ca_file=pki.ca,
            client_cert_file=pki.client[0],
            client_key_file=pki.client[1],
        )
    )
    # rustls: InvalidCertificate(NotValidForName...), expected 127.0.0.1.
    assert "certificate" in str(err).lower(), err
    assert len(proxy.clients) == before


async def test_a_plain_client_does_not_get_through(proxy: TlsProxy) -> None:
    plain = Settings(temporal_address=f"127.0.0.1:{proxy.port}", temporal_tls=None)
    before = len(proxy.clients)
    await _refused(plain)
    assert len(proxy.clients) == before
