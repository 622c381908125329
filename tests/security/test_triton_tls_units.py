"""TLS failures with Triton are named and fatal at start-up: gRPC's own error texts (as a real
Triton over TLS gives them) map to one cause each; the model wait gives up at once on them and
still waits for a Triton that is merely down."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from consumer.engine import EngineFatalError, wiring
from consumer.inference import InferenceTLSError, InferenceUnavailableError
from consumer.inference.client import TritonEndpoint, _classify, read_model_spec
from consumer.settings import Settings

_PREFIX = "[StatusCode.UNAVAILABLE] failed to connect to all addresses; last error: "
UNTRUSTED = (
    _PREFIX + "UNKNOWN: ipv4:127.0.0.1:43059: Tls handshake failed (TSI_PROTOCOL_FAILURE): "
    "SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: "
    "self signed certificate in certificate chain: OK"
)
CLOSED = _PREFIX + "UNAVAILABLE: ipv4:127.0.0.1:35633: Socket closed"
REFUSED = (
    _PREFIX + "UNAVAILABLE: ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused"
)

TLS = TritonEndpoint("grpc", "127.0.0.1:1", ssl=True, root_certificates="ca.pem")
MUTUAL = TritonEndpoint(
    "grpc", "127.0.0.1:1", ssl=True, certificate_chain="c.pem", private_key="k.pem"
)
PLAIN = TritonEndpoint("grpc", "127.0.0.1:1")


@pytest.mark.parametrize(
    ("text", "endpoint", "cause"),
    [
        (UNTRUSTED, TLS, "the server's certificate is not trusted"),
        (CLOSED, TLS, "it requires a client certificate"),
        (CLOSED, MUTUAL, "it refused the client certificate"),
        ("Peer name 127.0.0.1 is not in peer certificate", TLS, "does not name this host"),
        (
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate",
            TLS,
            "the server's certificate is not trusted",
        ),
    ],
)
def test_tls_failures_are_named(text: str, endpoint: TritonEndpoint, cause: str) -> None:
    err = _classify(RuntimeError(text), endpoint)
    assert isinstance(err, InferenceTLSError)
    assert cause in str(err) and "\n" not in str(err)


@pytest.mark.parametrize(("text", "endpoint"), [(REFUSED, TLS), (CLOSED, PLAIN)])
def test_a_server_that_is_down_stays_unavailable(text: str, endpoint: TritonEndpoint) -> None:
    err = _classify(RuntimeError(text), endpoint)
    assert type(err) is InferenceUnavailableError


def test_during_a_run_a_tls_failure_is_retried_like_unavailability() -> None:
    assert type(_classify(RuntimeError(UNTRUSTED))) is InferenceUnavailableError


def test_an_unreadable_tls_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing-ca.pem"
    endpoint = TritonEndpoint("grpc", "127.0.0.1:1", ssl=True, root_certificates=str(missing))
    with pytest.raises(InferenceTLSError, match=r"cannot read a Triton TLS file.*missing-ca\.pem"):
        read_model_spec(endpoint, "m", "", "EMBEDDING")


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.waits = 0

    def monotonic(self) -> float:
        return self.now

    def wait(self, _event: threading.Event, seconds: float | None) -> bool:
        self.waits += 1
        self.now += seconds or 0.0
        return False


def _wait(monkeypatch: pytest.MonkeyPatch, errors: list[Exception]) -> tuple[Any, _Clock]:
    def fake(*_args: Any) -> Any:
        raise errors.pop(0) if len(errors) > 1 else errors[0]

    monkeypatch.setattr(wiring, "read_model_spec", fake)
    clock = _Clock()
    s = Settings(triton_url="grpcs://127.0.0.1:1")
    try:
        wiring.wait_for_model_spec(TLS, s, threading.Event(), clock)
    except EngineFatalError as exc:
        return exc, clock
    raise AssertionError("no fatal error")


def test_the_model_wait_gives_up_at_once_on_a_tls_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    exc, clock = _wait(monkeypatch, [InferenceTLSError("TLS failed: not trusted")])
    assert clock.waits == 0 and clock.now == 0
    assert str(exc) == "Triton at grpcs://127.0.0.1:1: TLS failed: not trusted"


def test_the_model_wait_still_waits_for_a_triton_that_is_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exc, clock = _wait(monkeypatch, [InferenceUnavailableError("connection refused")])
    assert clock.waits > 5 and clock.now >= 60
    assert "is not ready" in str(exc)
