"""The SSRF guard through the fetcher.

Only loopback is ever dialed: refused targets are loopback addresses other than the server's
(127.0.0.2, ...), or stubbed resolver answers that the guard must refuse before connecting.
``dialed`` (conftest) records every connection attempt.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from consumer.fetch import Fetcher, FetchPolicy, ForbiddenAddress, RedirectRefused
from schemas.deadletter import ErrorType, Stage

MakeFetcher = Callable[..., Fetcher]
PolicyFor = Callable[..., FetchPolicy]


def resolver_of(*answers: str, calls: list[str] | None = None) -> Callable[[str, int], list[str]]:
    """A resolver that answers every host with ``answers`` (and records the hosts asked)."""

    def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        return list(answers)

    return resolve


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.2",
        "127.255.255.254",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:2]",
        "[::127.0.0.1]",
        "2130706433",  # decimal 127.0.0.1
        "2130706434",  # decimal 127.0.0.2
        "0x7f.1",
        "0x7f000002",
        "017700000001",  # octal
        "0177.0.0.2",
        "127.2",
        "0",
        "0.0.0.0",
    ],
)
def test_loopback_in_every_spelling_is_refused_by_default(
    image_server, make_fetcher: MakeFetcher, dialed: list[tuple[str, int]], host: str
) -> None:
    fetcher = make_fetcher(FetchPolicy(), resolver=resolver_of())  # no name lookups here
    with pytest.raises(ForbiddenAddress) as caught:
        fetcher.fetch(f"http://{host}:{image_server.port}/img/chelsea.jpg")
    assert caught.value.error_type is ErrorType.FORBIDDEN_ADDRESS
    assert caught.value.stage is Stage.FETCH
    assert dialed == []


@pytest.mark.parametrize(
    "answer",
    [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.169.254",
        "127.0.0.1",
        "0.0.0.0",
        "224.0.0.251",
        "255.255.255.255",
        "240.0.0.1",
        "198.18.0.1",
        "::1",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "fd00::1",
        "fc00::1",
        "fe80::1",
        "fe80::1%1",
        "ff02::1",
        "2001:db8::1",
    ],
)
def test_forbidden_resolver_answers_are_refused_before_connecting(
    make_fetcher: MakeFetcher, dialed: list[tuple[str, int]], answer: str
) -> None:
    fetcher = make_fetcher(FetchPolicy(), resolver=resolver_of(answer))
    with pytest.raises(ForbiddenAddress) as caught:
        fetcher.fetch("http://images.example/cat.jpg")
    assert caught.value.error_type is ErrorType.FORBIDDEN_ADDRESS
    assert "images.example" in caught.value.message
    assert dialed == []


def test_default_resolver_refuses_localhost(
    image_server, make_fetcher: MakeFetcher, dialed: list[tuple[str, int]]
) -> None:
    with pytest.raises(ForbiddenAddress):
        make_fetcher(FetchPolicy()).fetch(f"http://localhost:{image_server.port}/img/chelsea.jpg")
    assert dialed == []


def test_allowed_network_makes_the_local_server_reachable(
    image_server, make_fetcher: MakeFetcher, dialed: list[tuple[str, int]]
) -> None:
    fetcher = make_fetcher(FetchPolicy(allowed_networks=("127.0.0.0/8",)))
    body = fetcher.fetch(image_server.url("/img/chelsea.jpg"))
    assert body == image_server.state.images["chelsea.jpg"]
    assert dialed == [("127.0.0.1", image_server.port)]


def test_allow_private_networks_turns_the_deny_list_off(
    image_server, make_fetcher: MakeFetcher
) -> None:
    fetcher = make_fetcher(FetchPolicy(allow_private_networks=True))
    assert (
        fetcher.fetch(image_server.url("/img/coffee.jpg"))
        == (image_server.state.images["coffee.jpg"])
    )


def test_allowed_network_does_not_open_the_rest(
    image_server, make_fetcher: MakeFetcher, dialed: list[tuple[str, int]]
) -> None:
    fetcher = make_fetcher(FetchPolicy(allowed_networks=("127.0.0.1/32",)))
    with pytest.raises(ForbiddenAddress):
        fetcher.fetch(image_server.url("/img/chelsea.jpg", host="127.0.0.2"))
    assert dialed == []


def test_host_name_is_dialed_by_its_checked_address_and_keeps_its_host_header(
    image_server, make_fetcher: MakeFetcher, dialed: list[tuple[str, int]]
) -> None:
    import json

    fetcher = make_fetcher(
        FetchPolicy(allowed_networks=("127.0.0.1/32",)), resolver=resolver_of("127.0.0.1")
    )
    headers = json.loads(fetcher.fetch(f"http://images.test:{image_server.port}/echo"))
    assert headers["host"] == f"images.test:{image_server.port}"
    assert dialed == [("127.0.0.1", image_server.port)]


def test_only_allowed_answers_are_dialed(
    image_server, make_fetcher: MakeFetcher, dialed: list[tuple[str, int]]
) -> None:
    resolver = resolver_of("169.254.169.254", "10.0.0.1", "127.0.0.2", "127.0.0.1")
    fetcher = make_fetcher(FetchPolicy(allowed_networks=("127.0.0.1/32",)), resolver=resolver)
    body = fetcher.fetch(f"http://images.test:{image_server.port}/img/chelsea.jpg")
    assert body == image_server.state.images["chelsea.jpg"]
    assert dialed == [("127.0.0.1", image_server.port)]


def test_dns_rebinding_cannot_swap_the_address_after_the_check(
    image_server, make_fetcher: MakeFetcher, dialed: list[tuple[str, int]]
) -> None:
    """The first answer is allowed, every later one is refused (127.0.0.2 is not allowed).

    A fetcher that checked one answer and connected with another lookup would dial 127.0.0.2
    (where nothing listens). Ours resolves once per connection and dials what it checked; a new
    connection is checked again and refused.
    """
    calls: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"] if len(calls) == 1 else ["127.0.0.2"]

    fetcher = make_fetcher(FetchPolicy(allowed_networks=("127.0.0.1/32",)), resolver=rebinding)
    url = f"http://rebind.test:{image_server.port}/img/chelsea.jpg?close=1"
    assert fetcher.fetch(url) == image_server.state.images["chelsea.jpg"]
    assert calls == ["rebind.test"]
    assert dialed == [("127.0.0.1", image_server.port)]

    # The server closed that connection, so the next fetch dials anew and sees the new answer.
    with pytest.raises(ForbiddenAddress):
        fetcher.fetch(url)
    assert calls == ["rebind.test", "rebind.test"]
    assert dialed == [("127.0.0.1", image_server.port)]


def test_redirect_to_a_forbidden_host_is_refused_by_default(
    image_server, make_fetcher: MakeFetcher, dialed: list[tuple[str, int]]
) -> None:
    fetcher = make_fetcher(FetchPolicy(allowed_networks=("127.0.0.1/32",)))
    target = "http://169.254.169.254/latest/meta-data/"
    with pytest.raises(RedirectRefused) as caught:
        fetcher.fetch(image_server.url(f"/redirect?to={target}"))
    assert caught.value.error_type is ErrorType.REDIRECT_REFUSED
    assert dialed == [("127.0.0.1", image_server.port)]


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.2:{port}/img/chelsea.jpg",
        "http://[::ffff:127.0.0.2]:{port}/img/chelsea.jpg",
        "http://metadata.test/latest/meta-data/",
    ],
)
def test_followed_redirect_is_checked_again(
    image_server, make_fetcher: MakeFetcher, dialed: list[tuple[str, int]], target: str
) -> None:
    def resolver(host: str, port: int) -> list[str]:
        return {"metadata.test": ["169.254.169.254"]}.get(host, [])

    policy = FetchPolicy(allowed_networks=("127.0.0.1/32",), follow_redirects=True)
    fetcher = make_fetcher(policy, resolver=resolver)
    location = target.format(port=image_server.port)
    with pytest.raises(ForbiddenAddress):
        fetcher.fetch(image_server.url(f"/redirect?to={location}"))
    assert dialed == [("127.0.0.1", image_server.port)]


def test_host_allow_list(image_server, make_fetcher: MakeFetcher) -> None:
    policy = FetchPolicy(
        allowed_networks=("127.0.0.1/32",), allowed_hosts=("images.test", ".cdn.test")
    )
    fetcher = make_fetcher(policy, resolver=resolver_of("127.0.0.1"))
    port = image_server.port
    good = image_server.state.images["chelsea.jpg"]
    assert fetcher.fetch(f"http://images.test:{port}/img/chelsea.jpg") == good
    assert fetcher.fetch(f"http://eu.cdn.test:{port}/img/chelsea.jpg") == good
    for host in ("evil.test", "images.test.evil.test", "cdn.test.evil", "127.0.0.1"):
        with pytest.raises(ForbiddenAddress):
            fetcher.fetch(f"http://{host}:{port}/img/chelsea.jpg")


def test_host_allow_list_applies_to_redirects(image_server, make_fetcher: MakeFetcher) -> None:
    policy = FetchPolicy(
        allowed_networks=("127.0.0.1/32",), allowed_hosts=("images.test",), follow_redirects=True
    )
    fetcher = make_fetcher(policy, resolver=resolver_of("127.0.0.1"))
    port = image_server.port
    target = f"http://other.test:{port}/img/chelsea.jpg"
    with pytest.raises(ForbiddenAddress):
        fetcher.fetch(f"http://images.test:{port}/redirect?to={target}")


def test_unresolvable_host_is_fetch_failed(make_fetcher: MakeFetcher) -> None:
    import socket

    def nxdomain(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    calls: list[float] = []
    fetcher = make_fetcher(FetchPolicy(), resolver=nxdomain, sleeps=calls)
    with pytest.raises(Exception) as caught:
        fetcher.fetch("http://no-such-host.test/cat.jpg")
    assert caught.value.error_type is ErrorType.FETCH_FAILED  # type: ignore[attr-defined]
    assert calls == []  # a name that does not exist is not retried
