"""The address rules of the SSRF guard and the policy's own validation (no network)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from consumer.fetch import FetchPolicy, ForbiddenAddress
from consumer.fetch.addresses import AddressGuard, embedded_ipv4, parse_numeric_host


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0X7F.0.0.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("10.0.0.1.", "10.0.0.1"),
        ("0", "0.0.0.0"),
        ("::1", "::1"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("169.254.43518", "169.254.169.254"),
    ],
)
def test_numeric_hosts_in_every_spelling(host: str, address: str) -> None:
    assert parse_numeric_host(host) == ipaddress.ip_address(address)


@pytest.mark.parametrize("host", ["example.com", "images.test", "a1.example", "0x7f.example"])
def test_names_are_not_numeric(host: str) -> None:
    assert parse_numeric_host(host) is None


@pytest.mark.parametrize("host", ["1.2.3.4.5", "256.0.0.1", "1.2.3.256", "08.0.0.1", "1.2.3.0x100"])
def test_malformed_numeric_hosts_are_refused(host: str) -> None:
    with pytest.raises(ForbiddenAddress):
        parse_numeric_host(host)


@pytest.mark.parametrize(
    ("address", "inner"),
    [
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("::ffff:0:a00:1", "10.0.0.1"),  # IPv4-translated
        ("::10.0.0.1", "10.0.0.1"),  # IPv4-compatible
        ("64:ff9b::a00:1", "10.0.0.1"),  # NAT64
        ("2002:a00:1::", "10.0.0.1"),  # 6to4
        ("2606:4700::1111", None),
        ("::1", None),
    ],
)
def test_embedded_ipv4(address: str, inner: str | None) -> None:
    expected = None if inner is None else ipaddress.IPv4Address(inner)
    assert embedded_ipv4(ipaddress.IPv6Address(address)) == expected


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "2606:4700:4700::1111",
        "2a00:1450:4001:80b::200e",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
    ],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert AddressGuard(FetchPolicy()).refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.31.255.255", "private"),
        ("192.168.0.1", "private"),
        ("100.100.100.200", "CGNAT"),
        ("169.254.169.254", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "reserved"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fd12:3456::1", "unique-local"),
        ("ff02::1", "multicast"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:127.0.0.1", "loopback"),
        ("64:ff9b::7f00:1", "loopback"),
        ("64:ff9b:1::1", "NAT64"),
        ("2001::1", "Teredo"),
    ],
)
def test_refused_ranges(address: str, reason: str) -> None:
    why = AddressGuard(FetchPolicy()).refusal(ipaddress.ip_address(address))
    assert why is not None and reason in why


def test_allowed_networks_open_only_their_range() -> None:
    guard = AddressGuard(FetchPolicy(allowed_networks=("10.20.0.0/16", "fd00:1::/32")))
    assert guard.refusal(ipaddress.ip_address("10.20.3.4")) is None
    assert guard.refusal(ipaddress.ip_address("::ffff:10.20.3.4")) is None
    assert guard.refusal(ipaddress.ip_address("fd00:1::5")) is None
    assert guard.refusal(ipaddress.ip_address("10.21.0.1")) == "private"
    assert guard.refusal(ipaddress.ip_address("169.254.169.254")) == "link-local"


def test_allow_private_networks_allows_everything() -> None:
    guard = AddressGuard(FetchPolicy(allow_private_networks=True))
    for address in ("127.0.0.1", "169.254.169.254", "::1", "fd00::1"):
        assert guard.refusal(ipaddress.ip_address(address)) is None


def test_mapped_answers_are_dialed_as_ipv4() -> None:
    guard = AddressGuard(
        FetchPolicy(allowed_networks=("127.0.0.1/32",)),
        resolver=lambda host, port: ["::ffff:127.0.0.1"],
    )
    assert guard.addresses_for("images.test", 80) == ["127.0.0.1"]


def test_resolver_garbage_is_refused() -> None:
    guard = AddressGuard(FetchPolicy(), resolver=lambda host, port: ["not-an-ip"])
    with pytest.raises(ForbiddenAddress):
        guard.addresses_for("images.test", 80)


@pytest.mark.parametrize(
    "options",
    [
        {"allowed_networks": ("not-a-network",)},
        {"allowed_schemes": frozenset({"ftp"})},
        {"max_bytes": 0},
        {"max_pixels": -1},
        {"total_timeout_s": 0},
        {"retries": -1},
        {"backoff_s": -0.1},
    ],
)
def test_policy_rejects_nonsense(options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FetchPolicy(**options)  # type: ignore[arg-type]


def test_policy_is_frozen() -> None:
    policy = FetchPolicy(file_roots=(Path("/srv/images"),))
    with pytest.raises(AttributeError):
        policy.max_bytes = 1  # type: ignore[misc]
