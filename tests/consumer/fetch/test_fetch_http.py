"""http(s) fetching against a local server: statuses, retries, timeouts, limits, redirects."""

from __future__ import annotations

import json
import tracemalloc
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from consumer.fetch import (
    Fetcher,
    FetchError,
    FetchPolicy,
    NotFound,
    RedirectRefused,
    ServerError,
    TooLarge,
    load_image,
)
from schemas.deadletter import ErrorType, Stage

MakeFetcher = Callable[..., Fetcher]
PolicyFor = Callable[..., FetchPolicy]


def key() -> str:
    return uuid.uuid4().hex


def test_good_image_bytes_are_returned_unchanged(image_server, make_fetcher: MakeFetcher) -> None:
    fetcher = make_fetcher()
    body = fetcher.fetch(image_server.url("/img/chelsea.jpg"))
    assert body == image_server.state.images["chelsea.jpg"]


def test_load_image_fetches_and_decodes(image_server, make_fetcher: MakeFetcher, chelsea) -> None:
    image = load_image(make_fetcher(), image_server.url("/img/astronaut.png"))
    assert image.shape == (512, 512, 3)
    assert image.dtype == np.uint8 and image.flags.c_contiguous


@pytest.mark.parametrize("status", [404, 410])
def test_gone_is_not_found_and_not_retried(
    image_server, make_fetcher: MakeFetcher, status: int
) -> None:
    path = f"/status/{status}"
    before = image_server.state.hits[path]
    with pytest.raises(NotFound) as caught:
        make_fetcher().fetch(image_server.url(path))
    assert caught.value.error_type is ErrorType.NOT_FOUND
    assert caught.value.stage is Stage.FETCH
    assert image_server.state.hits[path] - before == 1


@pytest.mark.parametrize("status", [400, 401, 403, 418])
def test_other_client_errors_are_http_errors_and_not_retried(
    image_server, make_fetcher: MakeFetcher, status: int
) -> None:
    path = f"/status/{status}"
    before = image_server.state.hits[path]
    with pytest.raises(FetchError) as caught:
        make_fetcher().fetch(image_server.url(path))
    assert caught.value.error_type is ErrorType.HTTP_ERROR
    assert str(status) in caught.value.message
    assert image_server.state.hits[path] - before == 1


def test_server_error_is_retried_then_dead_lettered(
    image_server, make_fetcher: MakeFetcher, policy_for: PolicyFor
) -> None:
    path = "/status/500"
    before = image_server.state.hits[path]
    sleeps: list[float] = []
    with pytest.raises(ServerError) as caught:
        make_fetcher(policy_for(retries=2), sleeps=sleeps).fetch(image_server.url(path))
    assert caught.value.error_type is ErrorType.SERVER_ERROR
    assert "after 3 attempts" in caught.value.message
    assert image_server.state.hits[path] - before == 3
    assert len(sleeps) == 2


def test_flaky_server_succeeds_on_the_third_attempt(
    image_server, make_fetcher: MakeFetcher, policy_for: PolicyFor
) -> None:
    path = f"/flaky/{key()}"
    sleeps: list[float] = []
    fetcher = make_fetcher(policy_for(retries=2, backoff_s=0.2), sleeps=sleeps)
    body = fetcher.fetch(image_server.url(path))
    assert body == image_server.state.images["chelsea.jpg"]
    assert image_server.state.hits[path] == 3
    # Exponential backoff with jitter: each delay lies in [step/2, step], the step doubling.
    assert len(sleeps) == 2
    assert 0.1 <= sleeps[0] <= 0.2
    assert 0.2 <= sleeps[1] <= 0.4


def test_flaky_server_with_too_few_retries_is_a_server_error(
    image_server, make_fetcher: MakeFetcher, policy_for: PolicyFor
) -> None:
    path = f"/flaky/{key()}"
    with pytest.raises(ServerError):
        make_fetcher(policy_for(retries=1)).fetch(image_server.url(path))
    assert image_server.state.hits[path] == 2


def test_retry_after_is_honoured(
    image_server, make_fetcher: MakeFetcher, policy_for: PolicyFor
) -> None:
    path = f"/throttled/{key()}"
    sleeps: list[float] = []
    fetcher = make_fetcher(policy_for(backoff_s=0.01), sleeps=sleeps)
    body = fetcher.fetch(image_server.url(path) + "?after=2")
    assert body == image_server.state.images["chelsea.jpg"]
    assert image_server.state.hits[path] == 2
    assert sleeps == [2.0]


def test_retry_after_is_capped(
    image_server, make_fetcher: MakeFetcher, policy_for: PolicyFor
) -> None:
    path = f"/throttled/{key()}"
    sleeps: list[float] = []
    fetcher = make_fetcher(policy_for(backoff_s=0.01, max_retry_after_s=0.5), sleeps=sleeps)
    fetcher.fetch(image_server.url(path) + "?after=3600")
    assert sleeps == [0.5]


def test_retry_after_beyond_the_deadline_gives_up_at_once(
    image_server, make_fetcher: MakeFetcher, policy_for: PolicyFor
) -> None:
    path = f"/throttled/{key()}"
    sleeps: list[float] = []
    fetcher = make_fetcher(policy_for(total_timeout_s=5.0, max_retry_after_s=60.0), sleeps=sleeps)
    with pytest.raises(ServerError) as caught:
        fetcher.fetch(image_server.url(path) + "?after=30")
    assert "429" in caught.value.message
    assert sleeps == []


def test_server_that_never_answers_is_a_timeout(
    image_server, make_fetcher: MakeFetcher, policy_for: PolicyFor
) -> None:
    path = f"/hang/{key()}"
    fetcher = make_fetcher(policy_for(read_timeout_s=0.3, retries=1))
    with pytest.raises(FetchError) as caught:
        fetcher.fetch(image_server.url(path))
    assert caught.value.error_type is ErrorType.FETCH_TIMEOUT
    assert "read timeout" in caught.value.message
    assert image_server.state.hits[path] == 2


@pytest.mark.timeout(60)  # without the cut the drip lasts 5 000 s
def test_slow_drip_is_cut_by_the_total_timeout(
    image_server, make_fetcher: MakeFetcher, policy_for: PolicyFor
) -> None:
    path = f"/drip/{key()}"
    fetcher = make_fetcher(policy_for(read_timeout_s=5.0, total_timeout_s=0.5, retries=2))
    with pytest.raises(FetchError) as caught:
        fetcher.fetch(image_server.url(path))
    assert caught.value.error_type is ErrorType.FETCH_TIMEOUT
    assert "total timeout" in caught.value.message
    assert image_server.state.hits[path] == 1


def test_a_connection_cut_at_the_deadline_is_not_reused(
    image_server, make_fetcher: MakeFetcher, policy_for: PolicyFor, dialed: list[tuple[str, int]]
) -> None:
    fetcher = make_fetcher(policy_for(read_timeout_s=5.0, total_timeout_s=0.5, retries=0))
    with pytest.raises(FetchError):
        fetcher.fetch(image_server.url(f"/drip/{key()}"))
    assert (
        fetcher.fetch(image_server.url("/img/chelsea.jpg"))
        == image_server.state.images["chelsea.jpg"]
    )
    assert len(dialed) == 2  # a new connection after the cut one


def test_connections_are_kept_alive_between_fetches(
    image_server, make_fetcher: MakeFetcher, dialed: list[tuple[str, int]]
) -> None:
    fetcher = make_fetcher()
    for name in ("chelsea.jpg", "coffee.jpg", "chelsea.jpg", "astronaut.png"):
        assert fetcher.fetch(image_server.url(f"/img/{name}")) == image_server.state.images[name]
    assert len(dialed) == 1


def test_a_body_shorter_than_declared_is_retried_then_fetch_failed(
    image_server, make_fetcher: MakeFetcher, policy_for: PolicyFor
) -> None:
    path = f"/short/{key()}"
    with pytest.raises(FetchError) as caught:
        make_fetcher(policy_for(retries=1)).fetch(image_server.url(path))
    assert caught.value.error_type is ErrorType.FETCH_FAILED
    assert "after 2 attempts" in caught.value.message
    assert image_server.state.hits[path] == 2


def test_refused_connection_is_retried_then_fetch_failed(
    make_fetcher: MakeFetcher, policy_for: PolicyFor, dialed: list[tuple[str, int]]
) -> None:
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago and has no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(FetchError) as caught:
        make_fetcher(policy_for(retries=2)).fetch(f"http://127.0.0.1:{port}/x.jpg")
    assert caught.value.error_type is ErrorType.FETCH_FAILED
    assert dialed == [("127.0.0.1", port)] * 3


def test_declared_length_over_the_limit_is_refused_before_reading(
    image_server, make_fetcher: MakeFetcher, policy_for: PolicyFor
) -> None:
    path = f"/huge/{key()}"
    with pytest.raises(TooLarge) as caught:
        make_fetcher(policy_for(max_bytes=1024 * 1024)).fetch(image_server.url(path))
    assert caught.value.error_type is ErrorType.TOO_LARGE
    assert "declares" in caught.value.message


def test_endless_body_is_cut_at_the_limit_with_bounded_memory(
    image_server, make_fetcher: MakeFetcher, policy_for: PolicyFor
) -> None:
    path = f"/huge-unsized/{key()}"
    limit = 1024 * 1024
    fetcher = make_fetcher(policy_for(max_bytes=limit))
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge) as caught:
            fetcher.fetch(image_server.url(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.error_type is ErrorType.TOO_LARGE
    assert peak < 8 * limit, f"peak traced memory {peak} bytes for a {limit}-byte limit"
    # The download was abandoned: the server's writes failed long before 200 MB.
    assert image_server.state.done_event(path).wait(30)
    assert image_server.state.stream_sent[path] < 64 * limit


def test_gzip_bomb_is_cut_at_the_limit(
    image_server, make_fetcher: MakeFetcher, policy_for: PolicyFor
) -> None:
    limit = 1024 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge):
            make_fetcher(policy_for(max_bytes=limit)).fetch(image_server.url("/gzip-bomb/x"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * limit


def test_gzip_encoded_image_is_inflated(image_server, make_fetcher: MakeFetcher) -> None:
    body = make_fetcher().fetch(image_server.url("/gzip-img/chelsea.jpg"))
    assert body == image_server.state.images["chelsea.jpg"]


def test_redirect_is_refused_by_default(image_server, make_fetcher: MakeFetcher) -> None:
    url = image_server.url("/redirect?to=/img/chelsea.jpg")
    with pytest.raises(RedirectRefused) as caught:
        make_fetcher().fetch(url)
    assert caught.value.error_type is ErrorType.REDIRECT_REFUSED


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirect_is_followed_when_allowed(
    image_server, make_fetcher: MakeFetcher, policy_for: PolicyFor, code: int
) -> None:
    url = image_server.url(f"/redirect?code={code}&to=/img/coffee.jpg")
    body = make_fetcher(policy_for(follow_redirects=True)).fetch(url)
    assert body == image_server.state.images["coffee.jpg"]


def test_redirect_chain_within_the_limit(
    image_server, make_fetcher: MakeFetcher, policy_for: PolicyFor
) -> None:
    fetcher = make_fetcher(policy_for(follow_redirects=True, max_redirects=3))
    assert fetcher.fetch(image_server.url("/chain/3")) == image_server.state.images["chelsea.jpg"]


def test_redirect_chain_over_the_limit_is_refused(
    image_server, make_fetcher: MakeFetcher, policy_for: PolicyFor
) -> None:
    fetcher = make_fetcher(policy_for(follow_redirects=True, max_redirects=3))
    with pytest.raises(RedirectRefused) as caught:
        fetcher.fetch(image_server.url("/chain/4"))
    assert "more than 3 redirects" in caught.value.message


def test_redirect_to_file_scheme_is_refused(
    image_server, make_fetcher: MakeFetcher, policy_for: PolicyFor, tmp_path
) -> None:
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    fetcher = make_fetcher(policy_for(follow_redirects=True, file_roots=(tmp_path,)))
    url = image_server.url(f"/redirect?to=file://{tmp_path}/secret.jpg")
    with pytest.raises(RedirectRefused):
        fetcher.fetch(url)


def test_headers_sent_and_no_cookies_kept(
    image_server, make_fetcher: MakeFetcher, policy_for: PolicyFor
) -> None:
    fetcher = make_fetcher(policy_for(user_agent="embedder-test/1"))
    fetcher.fetch(image_server.url("/set-cookie"))
    headers = json.loads(fetcher.fetch(image_server.url("/echo")))
    assert headers["user-agent"] == "embedder-test/1"
    assert headers["accept-encoding"] == "identity"
    assert "cookie" not in headers


def test_unexpected_3xx_without_location_is_an_http_error(
    image_server, make_fetcher: MakeFetcher, policy_for: PolicyFor
) -> None:
    with pytest.raises(FetchError) as caught:
        make_fetcher(policy_for(follow_redirects=True)).fetch(image_server.url("/status/304"))
    assert caught.value.error_type is ErrorType.HTTP_ERROR


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/status/404", ErrorType.NOT_FOUND),
        ("/status/403", ErrorType.HTTP_ERROR),
        ("/status/503", ErrorType.SERVER_ERROR),
        ("/redirect?to=/img/chelsea.jpg", ErrorType.REDIRECT_REFUSED),
    ],
)
def test_messages_never_contain_query_strings_or_userinfo(
    image_server, make_fetcher: MakeFetcher, path: str, expected: ErrorType
) -> None:
    sep = "&" if "?" in path else "?"
    url = (
        f"http://alice:hunter2@127.0.0.1:{image_server.port}{path}"
        f"{sep}X-Amz-Signature=topsecret#frag"
    )
    with pytest.raises(FetchError) as caught:
        make_fetcher().fetch(url)
    assert caught.value.error_type is expected
    text = str(caught.value)
    for secret in ("hunter2", "alice", "topsecret", "X-Amz-Signature", "frag"):
        assert secret not in text


def test_error_type_and_stage_survive_pickling(image_server, make_fetcher: MakeFetcher) -> None:
    import pickle

    with pytest.raises(NotFound) as caught:
        make_fetcher().fetch(image_server.url("/status/404"))
    copy = pickle.loads(pickle.dumps(caught.value))
    assert type(copy) is NotFound
    assert copy.message == caught.value.message
    assert copy.error_type is ErrorType.NOT_FOUND


def test_one_fetcher_shared_by_many_threads(image_server, make_fetcher: MakeFetcher) -> None:
    fetcher = make_fetcher()
    names = ["chelsea.jpg", "astronaut.png", "coffee.jpg"] * 20

    def fetch(name: str) -> bool:
        return fetcher.fetch(image_server.url(f"/img/{name}")) == image_server.state.images[name]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(fetch, names))
    assert len(results) == len(names) and all(results)


def test_concurrent_load_image_from_threads(image_server, make_fetcher: MakeFetcher) -> None:
    fetcher = make_fetcher()
    uris = [image_server.url("/img/chelsea.jpg"), image_server.url("/img/astronaut.png")] * 12
    with ThreadPoolExecutor(max_workers=6) as pool:
        shapes = list(pool.map(lambda uri: load_image(fetcher, uri).shape, uris))
    assert shapes == [(300, 451, 3), (512, 512, 3)] * 12
