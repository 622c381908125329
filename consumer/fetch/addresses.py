"""The SSRF guard: which addresses may be connected to, and the one resolution that decides it.

A host is resolved exactly once per connection, every address is checked, and the connection is
made to a checked address (see :mod:`consumer.fetch.transport`), so a DNS answer that changes
between a check and a connect (DNS rebinding) cannot reach a refused address.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Final

from consumer.fetch.exceptions import FetchFailed, ForbiddenAddress
from consumer.fetch.policy import FetchPolicy

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: ``resolver(host, port)`` returns the host's addresses as strings, in preference order.
Resolver = Callable[[str, int], list[str]]


class ResolveError(Exception):
    """A host name that could not be resolved now; it may resolve later (retry)."""


def _nets(pairs: Iterable[tuple[str, str]]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(cidr), why) for cidr, why in pairs)


#: IPv4 ranges refused by default, with the reason given in the error message.
_V4_REFUSED: Final = _nets(
    [
        ("0.0.0.0/8", "unspecified ('this network')"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared address space (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay anycast"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
    ]
)

#: IPv6 ranges refused by default (ranges that embed an IPv4 address are handled separately).
_V6_REFUSED: Final = _nets(
    [
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("100::/64", "discard-only"),
        ("2001::/23", "IETF protocol assignments (Teredo, ORCHID, ...)"),
        ("2001:db8::/32", "documentation"),
        ("fc00::/7", "unique-local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    ]
)

_V4_MAPPED: Final = ipaddress.ip_network("::ffff:0:0/96")
_V4_TRANSLATED: Final = ipaddress.ip_network("::ffff:0:0:0/96")
_V4_COMPATIBLE: Final = ipaddress.ip_network("::/96")
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_6TO4: Final = ipaddress.ip_network("2002::/16")


def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's answer for ``host`` (``getaddrinfo``), duplicates removed."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def parse_numeric_host(host: str) -> IPAddress | None:
    """The address a numeric host stands for, in every spelling a resolver would accept.

    Handles IPv6 literals (with or without brackets) and IPv4 written the way ``inet_aton`` and
    browsers read it: dotted decimal, but also ``2130706433``, ``0x7f.1``, ``0177.0.0.1``,
    ``127.1``. Returns ``None`` for a host name. A host that ends in a number but is no valid IPv4
    address (``1.2.3.4.5``, ``256.1.1.1``) is refused rather than handed to a resolver.
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text.replace("%25", "%"))
        except ValueError:
            raise ForbiddenAddress(f"host {host!r} is not a valid IPv6 address") from None
    if text.endswith("."):
        text = text[:-1]
    parts = text.split(".")
    if not parts or not _looks_numeric(parts[-1]):
        return None
    if len(parts) > 4:
        raise ForbiddenAddress(f"host {host!r} is neither a name nor a valid IPv4 address")
    numbers = [_ipv4_part(part, host) for part in parts]
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        raise ForbiddenAddress(f"host {host!r} is an out-of-range IPv4 address")
    value = last
    for index, number in enumerate(head):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _looks_numeric(part: str) -> bool:
    if part.isdigit() and part.isascii():
        return True
    if part[:2].lower() == "0x":
        digits = part[2:]
        return all(c in "0123456789abcdefABCDEF" for c in digits)
    return False


def _ipv4_part(part: str, host: str) -> int:
    try:
        if part[:2].lower() == "0x":
            return int(part[2:], 16) if part[2:] else 0
        if len(part) > 1 and part.startswith("0"):
            return int(part, 8)
        if not (part.isdigit() and part.isascii()):
            raise ValueError(part)
        return int(part, 10)
    except ValueError:
        pass
    raise ForbiddenAddress(f"host {host!r} is neither a name nor a valid IPv4 address")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, translated, compatible, NAT64, 6to4)."""
    if address in _V4_MAPPED or address in _V4_TRANSLATED or address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _V4_COMPATIBLE and int(address) > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _6TO4:
        return address.sixtofour
    return None


class AddressGuard:
    """Resolves hosts once and keeps only the addresses the policy allows.

    Thread-safe: it holds no mutable state.
    """

    def __init__(self, policy: FetchPolicy, resolver: Resolver | None = None) -> None:
        self._resolver = resolver or system_resolver
        self._all_allowed = policy.allow_private_networks
        self._allowed_networks = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in policy.allowed_networks
        )

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` is refused, or ``None`` when it may be connected to."""
        if self._all_allowed or self._explicitly_allowed(address):
            return None
        if isinstance(address, ipaddress.IPv6Address):
            if address.scope_id:
                address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
            inner = embedded_ipv4(address)
            if inner is not None:
                if self._explicitly_allowed(inner):
                    return None
                why = self._range_refusal(inner)
                return f"embeds IPv4 {inner}, which is {why}" if why else None
        return self._range_refusal(address)

    def _explicitly_allowed(self, address: IPAddress) -> bool:
        return any(
            address.version == net.version and address in net for net in self._allowed_networks
        )

    @staticmethod
    def _range_refusal(address: IPAddress) -> str | None:
        table = _V4_REFUSED if address.version == 4 else _V6_REFUSED
        for network, why in table:
            if address in network:
                return why
        if not address.is_global:
            return "not globally routable"
        return None

    def addresses_for(self, host: str, port: int) -> list[str]:
        """The allowed addresses of ``host``, resolved once, in the resolver's order.

        Raises :class:`ForbiddenAddress` when none is allowed, :class:`FetchFailed` when the
        name does not exist, and :class:`ResolveError` when resolution failed for now.
        """
        literal = parse_numeric_host(host)
        if literal is not None:
            candidates: list[IPAddress] = [literal]
        else:
            try:
                answers = self._resolver(host, port)
            except socket.gaierror as exc:
                if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)):
                    raise FetchFailed(f"host {host!r} does not resolve") from None
                raise ResolveError(f"cannot resolve host {host!r}: {exc.strerror}") from None
            except (OSError, UnicodeError) as exc:
                raise ResolveError(f"cannot resolve host {host!r}: {exc}") from None
            candidates = []
            for answer in answers:
                try:
                    candidates.append(ipaddress.ip_address(answer))
                except ValueError:
                    raise ForbiddenAddress(
                        f"host {host!r} resolved to something that is not an address"
                    ) from None
            if not candidates:
                raise FetchFailed(f"host {host!r} has no address")
        allowed: list[str] = []
        refused: list[str] = []
        for address in candidates:
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped  # dial the IPv4 address it stands for
            why = self.refusal(address)
            if why is None:
                allowed.append(str(address))
            else:
                refused.append(f"{address} ({why})")
        if not allowed:
            raise ForbiddenAddress(
                f"host {host!r} resolves only to refused addresses: {', '.join(refused)}"
            )
        return allowed
