"""urllib3 connection pools that dial only addresses the SSRF guard has checked.

urllib3 resolves and connects in its connection's ``_new_conn``. The connections here override
it: they ask :class:`~consumer.fetch.addresses.AddressGuard` for the host's allowed addresses
(one resolution per connection) and connect to one of exactly those IPs. The HTTP ``Host``
header, TLS SNI and certificate verification still use the host name from the URL, because
urllib3 takes them from the connection's host, not from the socket. There are no proxies (none
configured, the environment is not read) and no Unix sockets.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections import OrderedDict
from typing import Any, Final

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from consumer.fetch.addresses import AddressGuard, ResolveError

#: Hosts whose pools are kept; the least recently used one is closed beyond this.
MAX_POOLS: Final = 64

#: Idle connections kept per host (more may be open at once; the extra ones are not kept).
CONNECTIONS_PER_HOST: Final = 16


def dial(
    guard: AddressGuard,
    host: str,
    port: int,
    timeout: float | None,
    connection: HTTPConnection,
) -> socket.socket:
    """A socket to the first reachable guard-approved address of ``host``.

    ``timeout`` covers all the addresses tried together. Raises the guard's
    :class:`~consumer.fetch.exceptions.FetchError` for a refused or unknown host, and urllib3's
    connection errors (which its pool turns into a failed request) otherwise.
    """
    try:
        addresses = guard.addresses_for(host, port)
    except ResolveError as exc:
        raise NewConnectionError(connection, str(exc)) from None
    deadline = None if timeout is None else time.monotonic() + timeout
    failure: Exception | None = None
    for address in addresses:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            break
        try:
            sock = socket.create_connection((address, port), remaining)
        except TimeoutError:
            failure = ConnectTimeoutError(connection, f"timed out connecting to {host!r}")
        except OSError as exc:
            failure = NewConnectionError(connection, str(exc.strerror or exc))
        else:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
    raise failure or ConnectTimeoutError(connection, f"timed out connecting to {host!r}")


def _timeout_s(value: object) -> float | None:
    """The connect timeout urllib3 set on a connection (a number, or its "default" marker)."""
    return float(value) if isinstance(value, int | float) else None


class GuardedHTTPConnection(HTTPConnection):
    """An HTTP connection that dials through :func:`dial`."""

    def __init__(self, *args: Any, guard: AddressGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard

    def _new_conn(self) -> socket.socket:
        port = self.port or self.default_port
        return dial(self.guard, self.host, port, _timeout_s(self.timeout), self)


class GuardedHTTPSConnection(GuardedHTTPConnection, HTTPSConnection):
    """An HTTPS connection that dials through :func:`dial`; TLS is verified for the host name."""


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = GuardedHTTPSConnection


class GuardedPools:
    """One keep-alive pool per (scheme, host, port), for the :data:`MAX_POOLS` hosts used last.

    Thread-safe: the table is locked, and urllib3's pools are thread-safe themselves.
    """

    def __init__(self, guard: AddressGuard, *, ssl_context: ssl.SSLContext) -> None:
        self._guard = guard
        self._ssl_context = ssl_context
        self._pools: OrderedDict[tuple[str, str, int], HTTPConnectionPool] = OrderedDict()
        self._lock = threading.Lock()

    def pool(self, scheme: str, host: str, port: int) -> HTTPConnectionPool:
        """The pool for an ``http``/``https`` origin (``host`` as the URL spells it)."""
        key = (scheme, host, port)
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                self._pools.move_to_end(key)
                return pool
            pool = self._new_pool(scheme, host, port)
            self._pools[key] = pool
            evicted = self._pools.popitem(last=False)[1] if len(self._pools) > MAX_POOLS else None
        if evicted is not None:
            evicted.close()
        return pool

    def _new_pool(self, scheme: str, host: str, port: int) -> HTTPConnectionPool:
        common: dict[str, Any] = {
            "maxsize": CONNECTIONS_PER_HOST,
            "block": False,
            "retries": False,
            "guard": self._guard,
        }
        if scheme == "https":
            return _GuardedHTTPSPool(host, port, ssl_context=self._ssl_context, **common)
        return _GuardedHTTPPool(host, port, **common)

    def close(self) -> None:
        """Close every pooled connection."""
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.close()
