"""TLS settings reach both Triton clients: grpcs:// is accepted, the HTTP client trusts the CA."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from consumer.engine.wiring import triton_endpoint
from consumer.inference.client import _ssl_context_factory
from consumer.settings import Settings


def _ca(path: Path) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "image-embedder test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def test_grpcs_urls_are_accepted_and_mean_tls() -> None:
    s = Settings(triton_url="grpcs://triton.example:8001")
    endpoint = triton_endpoint(s)
    assert (endpoint.protocol, endpoint.address, endpoint.ssl) == (
        "grpc",
        "triton.example:8001",
        True,
    )


def test_the_http_client_trusts_the_configured_ca(tmp_path: Path) -> None:
    ca = _ca(tmp_path / "ca.pem")
    s = Settings(triton_url="https://triton.example:8000", triton_ssl_root_certificates=ca)
    context = _ssl_context_factory(triton_endpoint(s))(cafile="/nonexistent/default.pem")
    subjects = [dict(x[0] for x in c["subject"]) for c in context.get_ca_certs()]
    assert {"commonName": "image-embedder test CA"} in subjects
    assert context.check_hostname, "hostname verification stays on"
