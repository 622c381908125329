"""What the fetcher may fetch, from where, and how much."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

#: Schemes this package knows how to fetch.
KNOWN_SCHEMES = frozenset({"http", "https", "file", "s3"})


@dataclass(frozen=True)
class FetchPolicy:
    """Limits and allow-lists for one :class:`~consumer.fetch.Fetcher`.

    The defaults are safe for untrusted URIs: public addresses only, no redirects, 32 MiB, 40
    megapixels, and ``file://`` refused until a root is given.

    ``total_timeout_s`` bounds one whole :meth:`~consumer.fetch.Fetcher.fetch` call, retries,
    backoff and redirects included; ``connect_timeout_s`` and ``read_timeout_s`` bound each
    connection attempt and each read. ``Retry-After`` is honoured up to ``max_retry_after_s``.
    ``allowed_hosts`` entries match a host exactly, or any subdomain when written ``.example.com``
    or ``*.example.com``; the address check still applies to allowed hosts. ``ca_file`` replaces
    the default trust store for https (e.g. an internal CDN's private CA).

    ``s3://`` objects are read with the AWS credential chain of the process (never from a
    message) from ``s3_endpoint_url`` (default: AWS, or ``AWS_ENDPOINT_URL``) in ``s3_region``
    (default: the chain's region; buckets elsewhere are found by redirect). ``allowed_buckets``
    empty means every bucket the credentials can read. The SSRF guard does not apply to the
    configured endpoint: a message names only a bucket and a key on it.
    """

    file_roots: tuple[Path, ...] = ()
    allowed_schemes: frozenset[str] = frozenset({"http", "https", "file", "s3"})
    allow_private_networks: bool = False
    allowed_networks: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    follow_redirects: bool = False
    max_redirects: int = 3
    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 40_000_000
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0
    total_timeout_s: float = 30.0
    retries: int = 2
    backoff_s: float = 0.2
    max_retry_after_s: float = 10.0
    user_agent: str = "image-embedder/0.1"
    ca_file: Path | None = None
    allowed_buckets: tuple[str, ...] = ()
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_path_style: bool = False
    s3_requester_pays: bool = False
    s3_max_pool_connections: int = 10

    def __post_init__(self) -> None:
        unknown = set(self.allowed_schemes) - KNOWN_SCHEMES
        if unknown:
            raise ValueError(f"unknown schemes in allowed_schemes: {sorted(unknown)}")
        for cidr in self.allowed_networks:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"allowed_networks: {cidr!r} is not a network: {exc}") from None
        for name, value in (
            ("max_bytes", self.max_bytes),
            ("max_pixels", self.max_pixels),
            ("connect_timeout_s", self.connect_timeout_s),
            ("read_timeout_s", self.read_timeout_s),
            ("total_timeout_s", self.total_timeout_s),
            ("s3_max_pool_connections", self.s3_max_pool_connections),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        for name, value in (
            ("max_redirects", self.max_redirects),
            ("retries", self.retries),
            ("backoff_s", self.backoff_s),
            ("max_retry_after_s", self.max_retry_after_s),
        ):
            if value < 0:
                raise ValueError(f"{name} must not be negative, got {value!r}")
