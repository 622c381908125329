"""A secured Kafka for the dev stack and the tests: the same jars and KRaft node as
:mod:`devstack.kafka`, with TLS everywhere, SASL and the StandardAuthorizer.

Listeners (all on loopback):

- ``SASL_SSL`` (``port``): SCRAM-SHA-256, SCRAM-SHA-512, PLAIN and, when a JWKS URL is given,
  OAUTHBEARER (JWTs validated against it); the server certificate names 127.0.0.1 and localhost.
- ``MTLS`` (``mtls_port``): TLS with a client certificate required; the principal is the
  certificate's common name (``CN=embedder`` is ``User:embedder``).
- ``BADHOST`` (``badhost_port``): SASL_SSL like the first, with a certificate signed by the same
  CA for another host name, for hostname-verification tests.
- ``INTERNAL`` and ``CONTROLLER``: mutual TLS between the node's broker and controller parts.

``super.users`` is the admin (SASL user ``admin``) and the node itself; every other principal
needs ACLs (``allow.everyone.if.no.acl.found`` is false). The users ``admin`` and ``embedder``
exist for every mechanism with random passwords (``passwords``); more SCRAM users can be added
through the admin client at run time. Certificates (a CA made for the purpose, a second CA
nobody trusts) are made on every start under ``<data_dir>/tls``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from devstack.kafka import DEFAULT_JVM_OPTIONS, KAFKA_LIBS_DIR, KafkaServer
from devstack.process import port_accepts
from devstack.tlscerts import CertFiles, CertificateAuthority

USERS: tuple[str, ...] = ("admin", "embedder")
SCRAM_MECHANISMS: tuple[str, ...] = ("SCRAM-SHA-256", "SCRAM-SHA-512")
WRONG_HOST = "wrong-host.invalid"
_PRINCIPAL_RULES = "RULE:^CN=([^,]+)$/$1/,DEFAULT"
_OAUTH_VALIDATOR = (
    "org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler"
)


def _jaas_plain(passwords: Mapping[str, str]) -> str:
    users = " ".join(f'user_{u}="{p}"' for u, p in passwords.items())
    return f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"


class SecureKafkaServer(KafkaServer):
    """A single-node KRaft Kafka with SASL_SSL, mTLS and the StandardAuthorizer on loopback."""

    name = "kafka-secure"

    def __init__(
        self,
        data_dir: Path,
        log_file: Path,
        port: int = 9094,
        controller_port: int = 9095,
        host: str = "127.0.0.1",
        *,
        mtls_port: int = 9096,
        badhost_port: int = 9097,
        internal_port: int = 9098,
        jwks_url: str | None = None,
        oauth_audience: str = "kafka",
        oauth_issuer: str | None = None,
        libs_dir: Path = KAFKA_LIBS_DIR,
        jvm_options: Sequence[str] = DEFAULT_JVM_OPTIONS,
        extra_config: Mapping[str, str] | None = None,
        pid_file: Path | None = None,
        cpus: str | None = None,
    ) -> None:
        super().__init__(
            data_dir,
            log_file,
            port=port,
            controller_port=controller_port,
            host=host,
            libs_dir=libs_dir,
            jvm_options=jvm_options,
            extra_config=extra_config,
            pid_file=pid_file,
            cpus=cpus,
        )
        self.mtls_port = mtls_port
        self.badhost_port = badhost_port
        self.internal_port = internal_port
        self.jwks_url = jwks_url
        self.oauth_audience = oauth_audience
        self.oauth_issuer = oauth_issuer
        self.tls_dir = self.data_dir / "tls"
        self.passwords = self._load_passwords()
        self._certs: dict[str, CertFiles] = {}
        self.ca: CertificateAuthority | None = None
        self.untrusted_ca: CertificateAuthority | None = None

    # -- credentials and certificates ---------------------------------------------------------
    def _load_passwords(self) -> dict[str, str]:
        """The users' passwords: kept in the data folder, as SCRAM credentials live in its
        metadata (a restart on the same folder keeps them)."""
        path = self.data_dir / "passwords.json"
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass
        passwords = {u: f"{u}-{secrets.token_urlsafe(18)}" for u in USERS}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps(passwords))
        return passwords

    def _make_certificates(self) -> None:
        self.ca = CertificateAuthority(self.tls_dir, "devstack")
        self.untrusted_ca = CertificateAuthority(self.tls_dir, "untrusted")
        self._certs = {
            "server": self.ca.issue("broker"),
            "badhost": self.ca.issue(
                "broker-badhost", (WRONG_HOST,), client=False, file_stem="devstack-badhost"
            ),
            "embedder": self.ca.issue("embedder", (), server=False),
            "admin": self.ca.issue("admin", (), server=False),
            "untrusted-embedder": self.untrusted_ca.issue("embedder", (), server=False),
            "untrusted-server": self.untrusted_ca.issue("broker"),
        }

    def cert(self, name: str) -> CertFiles:
        """One of: server, badhost, embedder, admin, untrusted-embedder, untrusted-server."""
        if not self._certs:
            self._make_certificates()
        return self._certs[name]

    @property
    def ca_file(self) -> Path:
        """The CA that signs the broker's and the clients' certificates (made at start)."""
        return self.tls_dir / "devstack-ca.pem"

    @property
    def untrusted_ca_file(self) -> Path:
        """A CA that signed nothing the broker trusts or presents."""
        return self.tls_dir / "untrusted-ca.pem"

    # -- addresses -------------------------------------------------------------------------
    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` of the SASL_SSL listener."""
        return f"{self.host}:{self.port}"

    @property
    def mtls_bootstrap_servers(self) -> str:
        return f"{self.host}:{self.mtls_port}"

    @property
    def badhost_bootstrap_servers(self) -> str:
        return f"{self.host}:{self.badhost_port}"

    def ports(self) -> list[int]:
        return [
            self.port,
            self.controller_port,
            self.mtls_port,
            self.badhost_port,
            self.internal_port,
        ]

    def client_config(
        self, mechanism: str = "SCRAM-SHA-512", user: str = "embedder", **extra: Any
    ) -> dict[str, Any]:
        """librdkafka settings for ``user`` over SASL_SSL with ``mechanism`` (or ``MTLS``)."""
        if mechanism == "MTLS":
            cert = self.cert(user)
            conf: dict[str, Any] = {
                "bootstrap.servers": self.mtls_bootstrap_servers,
                "security.protocol": "SSL",
                "ssl.ca.location": str(self.ca_file),
                "ssl.certificate.location": str(cert.cert),
                "ssl.key.location": str(cert.key),
            }
        else:
            conf = {
                "bootstrap.servers": self.bootstrap_servers,
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": mechanism,
                "ssl.ca.location": str(self.ca_file),
            }
            if mechanism != "OAUTHBEARER":
                conf["sasl.username"] = user
                conf["sasl.password"] = self.passwords[user]
        conf.update(extra)
        return conf

    def admin_config(self) -> dict[str, Any]:
        return self.client_config("SCRAM-SHA-512", "admin")

    # -- the broker -----------------------------------------------------------------------
    def config(self) -> dict[str, str]:
        host = self.host
        server = self.cert("server")
        badhost = self.cert("badhost")
        truststore = str(self.ca_file)
        mechanisms = [*SCRAM_MECHANISMS, "PLAIN"]
        if self.jwks_url:
            mechanisms.append("OAUTHBEARER")
        settings = super().config()
        settings.update(
            {
                "listeners": ",".join(
                    [
                        f"SASL_SSL://{host}:{self.port}",
                        f"MTLS://{host}:{self.mtls_port}",
                        f"BADHOST://{host}:{self.badhost_port}",
                        f"INTERNAL://{host}:{self.internal_port}",
                        f"CONTROLLER://{host}:{self.controller_port}",
                    ]
                ),
                "advertised.listeners": ",".join(
                    [
                        f"SASL_SSL://{host}:{self.port}",
                        f"MTLS://{host}:{self.mtls_port}",
                        f"BADHOST://{host}:{self.badhost_port}",
                        f"INTERNAL://{host}:{self.internal_port}",
                    ]
                ),
                "listener.security.protocol.map": (
                    "SASL_SSL:SASL_SSL,MTLS:SSL,BADHOST:SASL_SSL,INTERNAL:SSL,CONTROLLER:SSL"
                ),
                "inter.broker.listener.name": "INTERNAL",
                "controller.listener.names": "CONTROLLER",
                # TLS: PEM files; mutual TLS unless a listener says otherwise
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": str(server.keystore_pem()),
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": truststore,
                "ssl.client.auth": "required",
                "ssl.endpoint.identification.algorithm": "",
                "ssl.principal.mapping.rules": _PRINCIPAL_RULES,
                "listener.name.sasl_ssl.ssl.client.auth": "none",
                "listener.name.badhost.ssl.client.auth": "none",
                "listener.name.badhost.ssl.keystore.type": "PEM",
                "listener.name.badhost.ssl.keystore.location": str(badhost.keystore_pem()),
                # SASL
                "sasl.enabled.mechanisms": ",".join(mechanisms),
                "authorizer.class.name": (
                    "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
                ),
                "super.users": "User:admin;User:broker",
                "allow.everyone.if.no.acl.found": "false",
                "auto.create.topics.enable": "false",
            }
        )
        for listener in ("sasl_ssl", "badhost"):
            prefix = f"listener.name.{listener}"
            settings[f"{prefix}.sasl.enabled.mechanisms"] = ",".join(mechanisms)
            settings[f"{prefix}.plain.sasl.jaas.config"] = _jaas_plain(self.passwords)
            for mech in SCRAM_MECHANISMS:
                settings[f"{prefix}.{mech.lower()}.sasl.jaas.config"] = (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                )
            if self.jwks_url:
                settings[f"{prefix}.oauthbearer.sasl.jaas.config"] = (
                    "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;"
                )
                settings[f"{prefix}.oauthbearer.sasl.server.callback.handler.class"] = (
                    _OAUTH_VALIDATOR
                )
        if self.jwks_url:
            settings["sasl.oauthbearer.jwks.endpoint.url"] = self.jwks_url
            settings["sasl.oauthbearer.expected.audience"] = self.oauth_audience
            if self.oauth_issuer:
                settings["sasl.oauthbearer.expected.issuer"] = self.oauth_issuer
        settings.update(self.extra_config)
        return settings

    def _jvm(self) -> list[str]:
        cmd = super()._jvm()
        if self.jwks_url:  # Kafka 4 reads only the URLs this property allows
            cmd.insert(1, f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={self.jwks_url}")
        return cmd

    def prepare(self) -> None:
        """Certificates on every start; the SCRAM users are written when storage is formatted."""
        self._make_certificates()
        if (self.log_dir / "meta.properties").is_file():
            super().prepare()
            return
        scram = [
            f"{mech}=[name={user},password={password}]"
            for user, password in self.passwords.items()
            for mech in SCRAM_MECHANISMS
        ]
        self._format_extra = [arg for entry in scram for arg in ("--add-scram", entry)]
        super().prepare()

    def format_arguments(self) -> list[str]:
        return list(getattr(self, "_format_extra", []))

    def is_ready(self) -> bool:
        """True when the admin, over SASL_SSL, gets metadata naming this node."""
        if not port_accepts(self.port, self.host):
            return False
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(
            {**self.admin_config(), "socket.connection.setup.timeout.ms": 2000, "log_level": 0}
        )
        try:
            metadata = admin.list_topics(timeout=3)
        except KafkaException:
            return False
        return self.node_id in metadata.brokers


def describe(server: SecureKafkaServer) -> list[str]:
    """Lines telling a user how to connect (paths, never the passwords themselves)."""
    return [
        f"SASL_SSL  {server.bootstrap_servers}  (SCRAM-SHA-256, SCRAM-SHA-512, PLAIN"
        + (", OAUTHBEARER)" if server.jwks_url else ")"),
        f"mTLS      {server.mtls_bootstrap_servers}  (client certificates in {server.tls_dir})",
        f"BADHOST   {server.badhost_bootstrap_servers}  (certificate for {WRONG_HOST})",
        f"CA        {server.ca_file}",
        f"users     {', '.join(server.passwords)} (passwords in {server.data_dir}/passwords.json)",
    ]
