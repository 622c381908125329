"""file:// URIs: only regular files under the configured roots."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from consumer.fetch import (
    Fetcher,
    FetchError,
    FetchPolicy,
    ForbiddenPath,
    NotFound,
    TooLarge,
    UnsupportedScheme,
)
from schemas.deadletter import ErrorType, Stage

MakeFetcher = Callable[..., Fetcher]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A file root with a.jpg, sub/b.jpg and a file with an awkward name."""
    base = tmp_path / "root"
    (base / "sub").mkdir(parents=True)
    (base / "a.jpg").write_bytes(b"A" * 10)
    (base / "sub" / "b.jpg").write_bytes(b"B" * 10)
    (base / "sub" / "with space & #hash?.jpg").write_bytes(b"C" * 10)
    return base


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the root, holding a secret."""
    other = tmp_path / "outside"
    other.mkdir()
    (other / "secret.jpg").write_bytes(b"SECRET")
    return other


def fetcher_for(make_fetcher: MakeFetcher, *roots: Path, **options: object) -> Fetcher:
    return make_fetcher(FetchPolicy(file_roots=roots, **options))  # type: ignore[arg-type]


def test_file_under_the_root_is_read(make_fetcher: MakeFetcher, root: Path) -> None:
    fetcher = fetcher_for(make_fetcher, root)
    assert fetcher.fetch((root / "a.jpg").as_uri()) == b"A" * 10
    assert fetcher.fetch((root / "sub" / "b.jpg").as_uri()) == b"B" * 10
    assert fetcher.fetch(f"file://localhost{root}/a.jpg") == b"A" * 10


def test_percent_encoded_names_are_decoded(make_fetcher: MakeFetcher, root: Path) -> None:
    uri = (root / "sub" / "with space & #hash?.jpg").as_uri()
    assert "%20" in uri and "%23" in uri and "%3F" in uri
    assert fetcher_for(make_fetcher, root).fetch(uri) == b"C" * 10


def test_no_root_refuses_file_uris_and_names_the_flag(
    make_fetcher: MakeFetcher, root: Path
) -> None:
    with pytest.raises(ForbiddenPath) as caught:
        make_fetcher(FetchPolicy()).fetch((root / "a.jpg").as_uri())
    assert caught.value.error_type is ErrorType.FORBIDDEN_PATH
    assert caught.value.stage is Stage.FETCH
    assert "--file-root" in caught.value.message


def test_file_outside_every_root_is_refused(
    make_fetcher: MakeFetcher, root: Path, outside: Path
) -> None:
    with pytest.raises(ForbiddenPath):
        fetcher_for(make_fetcher, root).fetch((outside / "secret.jpg").as_uri())


@pytest.mark.parametrize(
    "suffix",
    [
        "/sub/../a.jpg",  # would stay inside, still refused: no '..' at all
        "/../outside/secret.jpg",
        "/sub/%2e%2e/%2e%2e/outside/secret.jpg",
        "/sub/%2E%2E/a.jpg",
    ],
)
def test_traversal_is_refused(
    make_fetcher: MakeFetcher, root: Path, outside: Path, suffix: str
) -> None:
    with pytest.raises(ForbiddenPath) as caught:
        fetcher_for(make_fetcher, root).fetch(f"file://{root}{suffix}")
    assert "traversal" in caught.value.message


def test_symlink_inside_the_root_is_followed(make_fetcher: MakeFetcher, root: Path) -> None:
    (root / "alias.jpg").symlink_to(root / "sub" / "b.jpg")
    (root / "linkdir").symlink_to(root / "sub", target_is_directory=True)
    fetcher = fetcher_for(make_fetcher, root)
    assert fetcher.fetch((root / "alias.jpg").as_uri()) == b"B" * 10
    assert fetcher.fetch((root / "linkdir" / "b.jpg").as_uri()) == b"B" * 10


def test_symlinks_pointing_out_are_refused(
    make_fetcher: MakeFetcher, root: Path, outside: Path
) -> None:
    (root / "escape.jpg").symlink_to(outside / "secret.jpg")
    (root / "escdir").symlink_to(outside, target_is_directory=True)
    (root / "abs.jpg").symlink_to("/etc/hostname")
    fetcher = fetcher_for(make_fetcher, root)
    for name in ("escape.jpg", "escdir/secret.jpg", "abs.jpg"):
        with pytest.raises(ForbiddenPath):
            fetcher.fetch(f"file://{root}/{name}")


def test_root_given_through_a_symlink_works(
    make_fetcher: MakeFetcher, root: Path, tmp_path: Path
) -> None:
    link = tmp_path / "root-link"
    link.symlink_to(root, target_is_directory=True)
    fetcher = fetcher_for(make_fetcher, link)
    assert fetcher.fetch(f"file://{link}/a.jpg") == b"A" * 10
    assert fetcher.fetch((root / "a.jpg").as_uri()) == b"A" * 10


def test_symlink_swapped_in_after_the_check_is_refused(
    make_fetcher: MakeFetcher,
    root: Path,
    outside: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A directory replaced by a symlink between the path check and the open is not followed."""
    (root / "sub2").symlink_to(outside, target_is_directory=True)
    (root / "last.jpg").symlink_to(outside / "secret.jpg")
    # Make the check see the paths as they were before the swap: plain entries of the root.
    monkeypatch.setattr("consumer.fetch.files.os.path.realpath", lambda p: os.path.normpath(p))
    fetcher = fetcher_for(make_fetcher, root)
    for name in ("sub2/secret.jpg", "last.jpg"):
        with pytest.raises(ForbiddenPath):
            fetcher.fetch(f"file://{root}/{name}")


@pytest.mark.timeout(20)
def test_fifo_is_refused_without_blocking(make_fetcher: MakeFetcher, root: Path) -> None:
    os.mkfifo(root / "pipe.jpg")
    with pytest.raises(ForbiddenPath) as caught:
        fetcher_for(make_fetcher, root).fetch((root / "pipe.jpg").as_uri())
    assert "regular file" in caught.value.message


def test_device_is_refused(make_fetcher: MakeFetcher) -> None:
    with pytest.raises(ForbiddenPath) as caught:
        fetcher_for(make_fetcher, Path("/dev")).fetch("file:///dev/zero")
    assert "regular file" in caught.value.message


def test_directory_is_refused(make_fetcher: MakeFetcher, root: Path) -> None:
    fetcher = fetcher_for(make_fetcher, root)
    for uri in ((root / "sub").as_uri(), root.as_uri()):
        with pytest.raises(ForbiddenPath):
            fetcher.fetch(uri)


def test_missing_file_is_not_found(make_fetcher: MakeFetcher, root: Path) -> None:
    (root / "dangling.jpg").symlink_to(root / "gone.jpg")
    fetcher = fetcher_for(make_fetcher, root)
    for name in ("nope.jpg", "sub/nope/x.jpg", "a.jpg/x.jpg", "dangling.jpg"):
        with pytest.raises(NotFound) as caught:
            fetcher.fetch(f"file://{root}/{name}")
        assert caught.value.error_type is ErrorType.NOT_FOUND


def test_file_over_the_byte_limit_is_too_large(make_fetcher: MakeFetcher, root: Path) -> None:
    (root / "big.jpg").write_bytes(b"x" * 2048)
    with pytest.raises(TooLarge):
        fetcher_for(make_fetcher, root, max_bytes=1024).fetch((root / "big.jpg").as_uri())
    assert fetcher_for(make_fetcher, root, max_bytes=2048).fetch((root / "big.jpg").as_uri())


@pytest.mark.parametrize(
    "uri",
    ["file://otherhost/{root}/a.jpg", "file://{root}/a.jpg?x=1", "file://{root}/a.jpg#frag"],
)
def test_hosts_queries_and_fragments_are_refused(
    make_fetcher: MakeFetcher, root: Path, uri: str
) -> None:
    with pytest.raises(ForbiddenPath):
        fetcher_for(make_fetcher, root).fetch(uri.format(root=root))


def test_file_scheme_can_be_disallowed(make_fetcher: MakeFetcher, root: Path) -> None:
    policy = FetchPolicy(file_roots=(root,), allowed_schemes=frozenset({"https"}))
    with pytest.raises(UnsupportedScheme):
        make_fetcher(policy).fetch((root / "a.jpg").as_uri())


@pytest.mark.parametrize(
    "uri",
    [
        "ftp://example.com/a.jpg",
        "gopher://example.com/",
        "data:image/png;base64,iVBORw0KGgo=",
        "gs://bucket/key.jpg",
        "/etc/passwd",
        "a.jpg",
        "javascript:alert(1)",
    ],
)
def test_unsupported_schemes(make_fetcher: MakeFetcher, uri: str) -> None:
    with pytest.raises(FetchError) as caught:
        make_fetcher(FetchPolicy()).fetch(uri)
    assert caught.value.error_type is ErrorType.UNSUPPORTED_SCHEME


def _feed(fd: int, body: bytes) -> None:
    """Write ``body`` into a pipe, then close it (a reader that stops early ends the write)."""
    try:
        os.write(fd, body)
    except BrokenPipeError:
        pass
    finally:
        os.close(fd)


@pytest.mark.parametrize("size_hint", [0, 10, 3 * 1024 * 1024])
def test_a_read_whatever_the_size_given_returns_the_whole_file_or_cuts_at_the_limit(
    size_hint: int,
) -> None:
    """The one-read fast path and the chunked rest agree: a file that grew after its ``fstat``
    (here: a pipe, whose size is unknown) is read whole, and cut once it passes the limit."""
    import threading

    from consumer.fetch import FetchPolicy
    from consumer.fetch.files import FileReader

    body = os.urandom(2 * 1024 * 1024 + 17)  # more than one chunk
    for limit, whole in ((len(body), True), (len(body) - 1, False)):
        reader = FileReader(FetchPolicy(max_bytes=limit))
        read_end, write_end = os.pipe()
        writer = threading.Thread(target=_feed, args=(write_end, body))
        writer.start()
        try:
            if whole:
                assert reader._read_bounded(read_end, "pipe", size_hint) == body
            else:
                with pytest.raises(TooLarge, match="larger than"):
                    reader._read_bounded(read_end, "pipe", size_hint)
        finally:
            os.close(read_end)
            writer.join(10)
        assert not writer.is_alive()
