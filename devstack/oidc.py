"""A small OpenID Connect token endpoint for the secured Kafka: client credentials in, RS256
JWTs out, and the JWKS the broker validates them against.

``POST /token`` takes ``grant_type=client_credentials`` with the client's id and secret (HTTP
Basic, as librdkafka's ``sasl.oauthbearer.method=oidc`` sends them, or form fields) and returns
``{"access_token", "token_type", "expires_in"}``; the token's ``sub`` is the client id (the
broker's principal: ``User:<client id>``). ``GET /jwks`` returns the public key. Loopback only;
for tests and the dev stack.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class TokenServer:
    """Issues RS256 JWTs to known clients (``clients``: id to secret) on ``127.0.0.1:port``."""

    def __init__(
        self,
        clients: Mapping[str, str],
        *,
        audience: str = "kafka",
        issuer: str = "devstack-oidc",
        lifetime_s: int = 300,
        port: int = 0,
    ) -> None:
        self.clients = dict(clients)
        self.audience = audience
        self.issuer = issuer
        self.lifetime_s = lifetime_s
        self.kid = secrets.token_hex(8)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.issued = 0
        self.refused = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/jwks":
                    self._send(404, {"error": "not_found"})
                    return
                self._send(200, server.jwks())

            def do_POST(self) -> None:
                if self.path.split("?", 1)[0] != "/token":
                    self._send(404, {"error": "not_found"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                client_id, secret = server.credentials(self.headers.get("Authorization"), form)
                if form.get("grant_type", [""])[0] != "client_credentials":
                    self._send(400, {"error": "unsupported_grant_type"})
                    return
                if client_id is None or not server.known(client_id, secret or ""):
                    server.refused += 1
                    self._send(401, {"error": "invalid_client"})
                    return
                scope = form.get("scope", [""])[0]
                token = server.token(client_id, scope)
                server.issued += 1
                self._send(
                    200,
                    {
                        "access_token": token,
                        "token_type": "Bearer",
                        "expires_in": server.lifetime_s,
                    },
                )

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks"

    def start(self) -> TokenServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="oidc", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- tokens ---------------------------------------------------------------------------
    @staticmethod
    def credentials(
        authorization: str | None, form: Mapping[str, list[str]]
    ) -> tuple[str | None, str | None]:
        if authorization and authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:].strip()).decode()
            except ValueError:
                return None, None
            client_id, _, secret = decoded.partition(":")
            return client_id, secret
        return form.get("client_id", [None])[0], form.get("client_secret", [None])[0]

    def known(self, client_id: str, secret: str) -> bool:
        expected = self.clients.get(client_id)
        return expected is not None and hmac.compare_digest(expected, secret)

    def jwks(self) -> dict[str, Any]:
        numbers = self._key.public_key().public_numbers()
        key = {"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256"}
        return {"keys": [{**key, "n": _uint(numbers.n), "e": _uint(numbers.e)}]}

    def token(self, subject: str, scope: str = "", lifetime_s: int | None = None) -> str:
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        claims = {
            "sub": subject,
            "aud": self.audience,
            "iss": self.issuer,
            "iat": now,
            "nbf": now - 5,
            "exp": now + (self.lifetime_s if lifetime_s is None else lifetime_s),
            "scope": scope,
        }
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"
