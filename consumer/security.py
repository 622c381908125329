"""Kafka security helpers: what a connection failure means, the run-time watch of
authentication failures, and the ``oauth_cb`` hook for token providers that need code.

Everything here turns librdkafka's errors into one line that names the cause and the setting to
look at; no line ever holds a password, a key or a token (only user names, mechanisms, hosts
and file paths).
"""

from __future__ import annotations

import importlib
import os
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

ENV_PREFIX = "IMAGE_EMBEDDER_"

#: librdkafka's local codes (KafkaError._AUTHENTICATION, KafkaError._SSL)
LOCAL_AUTHENTICATION = -169
LOCAL_SSL = -181
#: librdkafka codes of an authentication failure (SASL, or a broker refusing the client)
AUTH_CODES = frozenset({LOCAL_AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED})
#: broker codes of a missing ACL
AUTHORIZATION_CODES = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    }
)
#: TLS alerts a broker sends when it refuses the client's certificate (mutual TLS)
_CLIENT_CERT_ALERTS = (
    "alert bad certificate",
    "alert unknown ca",
    "alert certificate required",
    "alert certificate expired",
    "alert certificate unknown",
    "alert handshake failure",
)


class KafkaSecurityError(RuntimeError):
    """A Kafka connection refused for a security reason; ``str()`` is the one line to show."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


@dataclass(frozen=True)
class SecurityFailure:
    """What a librdkafka error means: ``cause`` is a short key (for metrics and tests)."""

    cause: str  # authentication | tls | client-certificate | authorization
    detail: str


def _broker_of(text: str) -> str | None:
    """``host:port`` from librdkafka's ``proto://host:port/id: ...`` error prefix."""
    head = text.split(": ", 1)[0]
    if "://" not in head:
        return None
    return head.split("://", 1)[1].split("/", 1)[0]


def classify(err: KafkaError) -> SecurityFailure | None:
    """The security cause of a librdkafka error (``None``: not a security failure)."""
    code = err.code()
    text = err.str()
    if code in AUTH_CODES:
        return SecurityFailure("authentication", text)
    if code in AUTHORIZATION_CODES:
        return SecurityFailure("authorization", text)
    lowered = text.lower()
    if code == LOCAL_SSL or "certificate verify failed" in lowered:
        return SecurityFailure("tls", text)
    if code == KafkaError._TRANSPORT and any(a in lowered for a in _CLIENT_CERT_ALERTS):
        return SecurityFailure("client-certificate", text)
    return None


def _split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def diagnose_tls(conf: Mapping[str, Any], address: str, timeout_s: float = 5.0) -> str:
    """Why the broker at ``address`` fails TLS verification with these librdkafka settings:
    an untrusted CA, a host name the certificate does not carry, an expired certificate.

    librdkafka reports all of them as "certificate verify failed"; Python's ``ssl`` names the
    reason, with the same CA file and the same hostname rule.
    """
    ca = conf.get("ssl.ca.location")
    algorithm = str(conf.get("ssl.endpoint.identification.algorithm", "https")).lower()
    check_hostname = algorithm == "https"
    host, port = _split_host_port(address)
    context = ssl.create_default_context(cafile=ca or None)
    context.check_hostname = check_hostname
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as sock,
            context.wrap_socket(sock, server_hostname=host) as tls,
        ):
            tls.getpeercert()
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or str(exc)
        where = f"ssl.ca.location {ca}" if ca else "the system's CA certificates"
        if exc.verify_code in {62, 64} or "mismatch" in reason.lower():
            return (
                f"the broker's certificate at {address} does not name the host {host!r} "
                "(hostname verification; fix the certificate's subject alternative names or "
                "the bootstrap address)"
            )
        if exc.verify_code == 10 or "expired" in reason.lower():
            return f"the broker's certificate at {address} has expired"
        return (
            f"the broker's certificate at {address} is not signed by a trusted CA ({reason}; "
            f"trusted: {where})"
        )
    except (OSError, ssl.SSLError) as exc:
        return f"TLS to {address} failed: {exc}"
    return (
        f"TLS to {address} failed: the certificate verifies with Python's ssl, not with librdkafka"
    )


def explain(failure: SecurityFailure, conf: Mapping[str, Any]) -> str:
    """The one line to show for ``failure`` under the settings ``conf``."""
    address = _broker_of(failure.detail) or str(conf.get("bootstrap.servers", "")).split(",")[0]
    if failure.cause == "authentication":
        mechanism = conf.get("sasl.mechanism") or "GSSAPI"
        user = conf.get("sasl.username")
        who = f"user {user!r} " if user else ""
        reason = failure.detail.split("SASL authentication error: ", 1)[-1]
        reason = reason.split(" (after ", 1)[0]
        return (
            f"Kafka authentication failed at {address}: {who}with {mechanism}: {reason} "
            "(check the user name and the password or its file)"
        )
    if failure.cause == "tls":
        return f"Kafka TLS verification failed: {diagnose_tls(conf, address)}"
    if failure.cause == "client-certificate":
        cert = conf.get("ssl.certificate.location") or "none given"
        return (
            f"the Kafka broker at {address} refused the client certificate "
            f"(ssl.certificate.location: {cert}): missing, expired or not signed by a CA the "
            "broker trusts"
        )
    return f"Kafka refused an operation: {failure.detail}"


# --- run-time watch ---------------------------------------------------------------------------


class AuthFailureWatch:
    """Auth failures seen during a run (a rotated password, a revoked certificate, a revoked
    ACL): retried for at most ``timeout_s`` from the first one, then fatal.

    ``observe`` takes every error of librdkafka's ``error_cb`` (any thread); a successful
    round trip (``ok()``, e.g. after a poll that returned messages or a commit that succeeded)
    clears the failure. ``on_retry(cause)`` is called once per failure seen (for a metric and
    a log line); ``fatal()`` returns the line to exit with once the time is spent.
    """

    def __init__(
        self,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_retry: Callable[[str, str], None] | None = None,
        conf: Mapping[str, Any] | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("the auth-failure timeout must be positive")
        self.timeout_s = timeout_s
        self._clock = clock
        self._on_retry = on_retry
        self._conf = dict(conf or {})
        self._first: float | None = None
        self._last: SecurityFailure | None = None

    def observe(self, err: KafkaError) -> SecurityFailure | None:
        """Record ``err`` when it is a security failure; returns what it was."""
        failure = classify(err)
        if failure is None:
            return None
        if self._first is None:
            self._first = self._clock()
        self._last = failure
        if self._on_retry is not None:
            self._on_retry(failure.cause, self._line(failure))
        return failure

    def ok(self) -> None:
        """A request went through: the failure (if any) is over."""
        self._first = None
        self._last = None

    @property
    def failing_since(self) -> float | None:
        return self._first

    def _line(self, failure: SecurityFailure) -> str:
        if failure.cause == "tls":  # no probe from error_cb's thread: name the cause only
            return f"Kafka TLS verification failed: {failure.detail}"
        return explain(failure, self._conf)

    def fatal(self) -> str | None:
        """The line to exit 1 with, once failures went on for ``timeout_s``; else ``None``."""
        if self._first is None or self._last is None:
            return None
        waited = self._clock() - self._first
        if waited < self.timeout_s:
            return None
        return f"{self._line(self._last)}; still failing after {waited:.0f} s"


# --- oauth_cb: token providers that need code (e.g. AWS MSK IAM) ------------------------------

OAuthCallback = Callable[[str], tuple[str, float]]


def load_oauth_cb(spec: str) -> OAuthCallback:
    """``module:function`` to the function librdkafka calls for a token.

    The function takes the ``sasl.oauthbearer.config`` string and returns ``(token,
    expiry_epoch_seconds)`` (optionally ``(token, expiry, principal, extensions)``), as
    confluent-kafka's ``oauth_cb`` expects. It is called again before the token expires.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"kafka_oauth_cb {spec!r} must look like package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"kafka_oauth_cb {spec!r}: cannot import {module_name}: {exc}") from exc
    func = module
    for part in attr.split("."):
        func = getattr(func, part, None)  # type: ignore[assignment]
        if func is None:
            raise ValueError(f"kafka_oauth_cb {spec!r}: {module_name} has no {attr}")
    if not callable(func):
        raise ValueError(f"kafka_oauth_cb {spec!r} is not callable")
    return func


# --- secrets from files -----------------------------------------------------------------------

#: librdkafka settings whose values are secrets: refused on the command line
_SECRET_SETTING = re.compile(r"password|secret|token|jaas|private|credential", re.I)
SECRETS_DIR_ENV = "IMAGE_EMBEDDER_SECRETS_DIR"
FILE_SUFFIX = "_FILE"


def refuse_secret_flags(config: Mapping[str, str]) -> None:
    """Raise when a ``--kafka-config`` flag carries a secret: every user of the machine sees a
    process's command line."""
    for name in config:
        if _SECRET_SETTING.search(name):
            raise ValueError(
                f"--kafka-config {name}: secrets are not accepted as command-line flags (the "
                "process list shows them); give IMAGE_EMBEDDER_KAFKA_SASL_PASSWORD_FILE (a "
                "mounted file), the environment or a --config file"
            )


def read_secret_file(path: str | Path, what: str) -> str:
    """A secret file's text without its final newline (``echo`` and editors add one)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ValueError(f"{what}: cannot read {path}: {reason}") from None
    return text.rstrip("\r\n")


class SecretFileSource(PydanticBaseSettingsSource):
    """Settings from files: ``IMAGE_EMBEDDER_<NAME>_FILE=/path`` for any setting, and every
    file of the folder ``IMAGE_EMBEDDER_SECRETS_DIR`` named after a setting (``<name>`` or
    ``IMAGE_EMBEDDER_<NAME>``, any case: the keys of a mounted Kubernetes Secret).

    A setting given both directly in the environment and as a file is refused (which one was
    meant is unclear). Below the environment, above the ``--config`` file.
    """

    def __init__(
        self, settings_cls: type[BaseSettings], environ: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(settings_cls)
        self._environ = {
            k.upper(): v for k, v in (os.environ if environ is None else environ).items()
        }

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        env = self._environ
        found: dict[str, Any] = {}
        folder = env.get(SECRETS_DIR_ENV)
        listing: dict[str, Path] = {}
        if folder:
            base = Path(folder)
            if not base.is_dir():
                raise ValueError(f"{SECRETS_DIR_ENV}: {folder} is not a folder")
            listing = {p.name.upper(): p for p in base.iterdir() if p.is_file()}
        for name in self.settings_cls.model_fields:
            var = f"{ENV_PREFIX}{name.upper()}"
            file_var = var + FILE_SUFFIX
            if file_var in env:
                if var in env:
                    raise ValueError(f"give {var} or {file_var}, not both")
                found[name] = read_secret_file(env[file_var], file_var)
            elif var not in env:
                path = listing.get(var) or listing.get(name.upper())
                if path is not None:
                    found[name] = read_secret_file(path, f"{SECRETS_DIR_ENV} {path.name}")
        return found
