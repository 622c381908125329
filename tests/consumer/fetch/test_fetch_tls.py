"""https through the guarded transport: the checked IP is dialed, the host name is verified.

A throw-away CA signs a certificate for ``images.test``; the server listens on 127.0.0.1 and the
stub resolver maps ``images.test`` there. TLS must succeed with SNI ``images.test`` (not the IP)
and fail for a certificate issued to another name.
"""

from __future__ import annotations

import datetime
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from consumer.fetch import Fetcher, FetchError, FetchPolicy
from schemas.deadletter import ErrorType

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

MakeFetcher = Callable[..., Fetcher]
BODY = b"\xff\xd8\xff tls body"


def _name(common_name: str) -> Any:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_pki(folder: Path, dns_name: str) -> tuple[Path, Path, Path]:
    """A CA and a leaf certificate for ``dns_name``: (ca.pem, leaf.pem, leaf.key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("fetch test CA"))
        .issuer_name(_name("fetch test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(dns_name))
        .issuer_name(ca.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem, leaf_pem, key_pem = folder / "ca.pem", folder / "leaf.pem", folder / "leaf.key"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    leaf_pem.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_pem, leaf_pem, key_pem


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)


class _TlsServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Failed handshakes are expected in these tests."""


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path, list[str | None]]]:
    """An https server on 127.0.0.1 for ``images.test``: (port, CA file, SNI names seen)."""
    ca_pem, leaf_pem, key_pem = _write_pki(tmp_path, "images.test")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(leaf_pem, key_pem)
    seen: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: seen.append(name)  # type: ignore[assignment]
    server = _TlsServer(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], ca_pem, seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_https_verifies_the_host_name_while_dialing_the_checked_ip(
    tls_server: tuple[int, Path, list[str | None]],
    make_fetcher: MakeFetcher,
    dialed: list[tuple[str, int]],
) -> None:
    port, ca_file, seen = tls_server
    policy = FetchPolicy(allowed_networks=("127.0.0.1/32",), ca_file=ca_file)
    fetcher = make_fetcher(policy, resolver=lambda host, p: ["127.0.0.1"])
    assert fetcher.fetch(f"https://images.test:{port}/a.jpg") == BODY
    assert dialed == [("127.0.0.1", port)]
    assert seen == ["images.test"]


def test_certificate_for_another_name_is_refused_without_retrying(
    tls_server: tuple[int, Path, list[str | None]],
    make_fetcher: MakeFetcher,
    dialed: list[tuple[str, int]],
) -> None:
    port, ca_file, _seen = tls_server
    policy = FetchPolicy(allowed_networks=("127.0.0.1/32",), ca_file=ca_file, retries=2)
    fetcher = make_fetcher(policy, resolver=lambda host, p: ["127.0.0.1"])
    with pytest.raises(FetchError) as caught:
        fetcher.fetch(f"https://other.test:{port}/a.jpg")
    assert caught.value.error_type is ErrorType.FETCH_FAILED
    assert "certificate" in caught.value.message
    assert len(dialed) == 1


def test_untrusted_issuer_is_refused(
    tls_server: tuple[int, Path, list[str | None]], make_fetcher: MakeFetcher
) -> None:
    port, _ca_file, _seen = tls_server
    policy = FetchPolicy(allowed_networks=("127.0.0.1/32",))  # default trust store
    fetcher = make_fetcher(policy, resolver=lambda host, p: ["127.0.0.1"])
    with pytest.raises(FetchError) as caught:
        fetcher.fetch(f"https://images.test:{port}/a.jpg")
    assert "certificate" in caught.value.message
