"""Certificates for the secured dev-stack servers, made at start with ``cryptography``.

A certificate authority made for the purpose signs short-lived leaf certificates (SAN
``127.0.0.1`` and ``localhost`` unless told otherwise); a second, untrusted CA exists so that
tests can present a certificate nobody trusts. Everything is PEM: keys unencrypted PKCS#8
(readable by Java's PEM key store and librdkafka alike), one file per certificate and key.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Long enough for a test session or a day of development, short enough to matter when leaked.
DEFAULT_VALIDITY = dt.timedelta(hours=12)
LOOPBACK_NAMES: tuple[str, ...] = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class CertFiles:
    """A certificate (PEM), its key (PEM, PKCS#8) and the chain file (cert + issuer)."""

    cert: Path
    key: Path
    chain: Path
    common_name: str

    def keystore_pem(self) -> Path:
        """One file holding key and certificate chain, as Java's PEM key store reads it."""
        path = self.cert.with_name(self.cert.stem + "-keystore.pem")
        if not path.exists():
            path.write_text(self.key.read_text() + self.chain.read_text())
        return path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


class CertificateAuthority:
    """A CA that writes its certificate to ``folder/<name>-ca.pem`` and signs leaf certificates."""

    def __init__(
        self, folder: Path, name: str = "devstack", validity: dt.timedelta = DEFAULT_VALIDITY
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.validity = validity
        self._key = _key()
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = self.folder / f"{name}-ca.pem"
        self.ca_file.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        common_name: str,
        names: tuple[str, ...] = LOOPBACK_NAMES,
        *,
        server: bool = True,
        client: bool = True,
        file_stem: str | None = None,
    ) -> CertFiles:
        """A leaf certificate for ``common_name`` with ``names`` as its SAN (empty: none)."""
        key = _key()
        now = dt.datetime.now(dt.UTC)
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + self.validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(_san(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        stem = file_stem or f"{self.name}-{common_name}"
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        files = CertFiles(
            cert=self.folder / f"{stem}.pem",
            key=self.folder / f"{stem}-key.pem",
            chain=self.folder / f"{stem}-chain.pem",
            common_name=common_name,
        )
        files.cert.write_bytes(cert_pem)
        files.key.write_bytes(_pem_key(key))
        files.key.chmod(0o600)
        files.chain.write_bytes(
            cert_pem + self.certificate.public_bytes(serialization.Encoding.PEM)
        )
        return files
