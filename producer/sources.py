"""Where messages come from: URI lists, JSON lines, directory scans and fsspec URLs.

Every source yields :class:`Item` values in a stable order: either a message ready to send or a
reason why one line or file could not become one (reported, never sent).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Literal
from urllib.parse import quote, unquote, urlsplit

import orjson

from producer.exceptions import InvalidInput, SourceUnavailable
from schemas import (
    ImageMessage,
    InvalidMessage,
    message_id_for_content,
    redact_uri,
)
from schemas.message import message_from_dict

IdFrom = Literal["uri", "content"]

#: Extensions taken as images when scanning an object store (no bytes are read to decide).
IMAGE_EXTENSIONS: Final = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
)
#: Largest file read to hash its content for ``--id-from content``.
MAX_CONTENT_BYTES: Final = 256 * 1024 * 1024
_MAGIC_READ_BYTES: Final = 16


@dataclass(frozen=True, slots=True)
class Item:
    """One input: a message to send, or why ``where`` (e.g. ``file.txt:12``) gave none."""

    where: str
    message: ImageMessage | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class MessageOptions:
    """How raw URIs become messages."""

    id_from: IdFrom = "uri"
    metadata: Mapping[str, Any] | None = None
    storage_options: Mapping[str, Any] | None = None


# -- image detection ----------------------------------------------------------------------------


def image_kind(head: bytes) -> str | None:
    """The image format announced by a file's first bytes, or ``None``."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head.startswith(b"BM") and len(head) >= 14:
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# -- reading bytes for --id-from content ----------------------------------------------------------


def read_uri_bytes(
    uri: str,
    *,
    max_bytes: int = MAX_CONTENT_BYTES,
    storage_options: Mapping[str, Any] | None = None,
    timeout_s: float = 30.0,
) -> bytes:
    """The bytes behind ``uri`` (file, http(s), or any fsspec protocol), at most ``max_bytes``.

    Raises :class:`SourceUnavailable` with a redacted URI when it cannot be read.
    """
    scheme = urlsplit(uri).scheme.lower()
    try:
        if scheme == "file":
            with Path(file_uri_to_path(uri)).open("rb") as stream:
                data = _read_bounded(stream, max_bytes)
        elif scheme in ("http", "https"):
            data = _read_http(uri, max_bytes, timeout_s)
        else:
            data = _read_fsspec(uri, max_bytes, storage_options or {})
    except SourceUnavailable:
        raise
    except Exception as exc:  # any I/O or client error: report it for this item only
        raise SourceUnavailable(
            f"cannot read {redact_uri(uri)}: {type(exc).__name__}: {exc}"
        ) from None
    return data


def _read_bounded(stream: IO[bytes], max_bytes: int) -> bytes:
    with stream:
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise SourceUnavailable(f"larger than {max_bytes} bytes")
    return data


def _read_http(uri: str, max_bytes: int, timeout_s: float) -> bytes:
    import httpx

    chunks: list[bytes] = []
    size = 0
    with httpx.stream("GET", uri, timeout=timeout_s, follow_redirects=True) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise SourceUnavailable(f"{redact_uri(uri)} is larger than {max_bytes} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


def _read_fsspec(uri: str, max_bytes: int, storage_options: Mapping[str, Any]) -> bytes:
    fsspec = import_fsspec()
    fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    return _read_bounded(fs.open(fs_path_from_uri(path), "rb"), max_bytes)


def import_fsspec() -> Any:
    """fsspec, or a clear message naming the optional extra that installs it."""
    try:
        import fsspec
    except ImportError:
        raise InvalidInput(
            "object-store URLs need the optional 's3' extra: pip install 'image-embedder[s3]'"
        ) from None
    return fsspec


def file_uri_to_path(uri: str) -> str:
    """The local path of a ``file://`` URI (percent-decoded)."""
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise InvalidInput(f"file URI with a host is not supported: {redact_uri(uri)}")
    return unquote(parts.path)


def fs_path_from_uri(path: str) -> str:
    """fsspec paths are not percent-encoded; URIs are."""
    return unquote(path)


# -- messages from raw inputs -------------------------------------------------------------------


def message_for_uri(
    uri: str, options: MessageOptions, *, explicit_id: str | None = None
) -> ImageMessage:
    """An upsert for ``uri`` with the options' metadata and id rule (raises on a bad input)."""
    msg_id = explicit_id
    if msg_id is None and options.id_from == "content":
        msg_id = message_id_for_content(
            read_uri_bytes(uri, storage_options=options.storage_options)
        )
    return ImageMessage.upsert(uri, id=msg_id, metadata=options.metadata)


def item_from_line(line: str, where: str, options: MessageOptions) -> Item | None:
    """One input line: a URI, or a JSON ``image.v1`` message; ``None`` for blanks and comments.

    Options' metadata is merged under a JSON message's own metadata (the message's keys win).
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    try:
        if text.startswith("{"):
            try:
                doc = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                return Item(where, error=f"not JSON: {exc}")
            msg = message_from_dict(doc)
            if msg.op == "delete":
                return Item(where, msg)
            explicit_id = doc.get("id")
            metadata = {**(options.metadata or {}), **(msg.metadata or {})} or None
            assert msg.uri is not None
            merged = MessageOptions(options.id_from, metadata, options.storage_options)
            return Item(where, message_for_uri(msg.uri, merged, explicit_id=explicit_id))
        return Item(where, message_for_uri(text, options))
    except InvalidMessage as exc:
        hint = ""
        if exc.field == "uri" and "scheme" in exc.reason and text.startswith(("/", ".")):
            hint = " (a local path? use file:///absolute/path, or the scan command)"
        return Item(where, error=f"{exc}{hint}")
    except (SourceUnavailable, InvalidInput) as exc:
        return Item(where, error=str(exc))


def items_from_lines(lines: Iterable[str], name: str, options: MessageOptions) -> Iterator[Item]:
    """Items from the lines of a file (``name`` labels errors: ``name:line``)."""
    for number, line in enumerate(lines, start=1):
        item = item_from_line(line, f"{name}:{number}", options)
        if item is not None:
            yield item


# -- scanning -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScanEntry:
    """An image found by a scan: its URI and how to read its bytes."""

    uri: str
    read: Callable[[], bytes]


def scan(source: str, storage_options: Mapping[str, Any] | None = None) -> Iterator[ScanEntry]:
    """Images under ``source``: a local directory (or ``file://`` URI) or an fsspec URL.

    Local files are recognised by their leading bytes (any name); objects in a store by their
    extension. Both are walked recursively, in sorted order, skipping hidden entries (``.*``).
    """
    scheme = urlsplit(source).scheme.lower() if "://" in source else ""
    if scheme in ("", "file"):
        root = Path(file_uri_to_path(source) if scheme == "file" else source)
        yield from scan_directory(root)
    else:
        yield from scan_fsspec(source, storage_options or {})


def scan_directory(root: Path) -> Iterator[ScanEntry]:
    """Images under a local directory, sorted by relative path; symlinked folders not followed."""
    if not root.is_dir():
        raise SourceUnavailable(f"not a directory: {root}")
    root = root.resolve()
    for path in _walk_sorted(root):
        try:
            with path.open("rb") as f:
                head = f.read(_MAGIC_READ_BYTES)
        except OSError:
            continue  # vanished or unreadable: not an image we can publish
        if image_kind(head) is None:
            continue
        yield ScanEntry(path.as_uri(), _local_reader(path))


def _walk_sorted(folder: Path) -> Iterator[Path]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise SourceUnavailable(f"cannot list {folder}: {exc.strerror}") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            mode = entry.stat(follow_symlinks=True).st_mode
        except OSError:
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_sorted(Path(entry.path))
        elif stat.S_ISREG(mode):
            yield Path(entry.path)


def _local_reader(path: Path) -> Callable[[], bytes]:
    def read() -> bytes:
        return _read_bounded(path.open("rb"), MAX_CONTENT_BYTES)

    return read


def scan_fsspec(url: str, storage_options: Mapping[str, Any]) -> Iterator[ScanEntry]:
    """Objects with an image extension under an fsspec URL (e.g. ``s3://bucket/prefix``)."""
    fsspec = import_fsspec()
    scheme = urlsplit(url).scheme.lower()
    try:
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
        paths = sorted(fs.find(root, withdirs=False))
    except ImportError as exc:
        raise InvalidInput(f"no filesystem for {scheme}:// ({exc})") from None
    except Exception as exc:  # credentials, network, missing bucket: one clear line
        raise SourceUnavailable(
            f"cannot list {redact_uri(url)}: {type(exc).__name__}: {exc}"
        ) from None
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        if name.startswith(".") or not has_image_extension(name):
            continue
        uri = f"{scheme}://" + quote(path, safe="/")
        yield ScanEntry(uri, _fs_reader(fs, path))


def _fs_reader(fs: Any, path: str) -> Callable[[], bytes]:
    def read() -> bytes:
        return _read_bounded(fs.open(path, "rb"), MAX_CONTENT_BYTES)

    return read


def items_from_scan(entries: Iterable[ScanEntry], options: MessageOptions) -> Iterator[Item]:
    """Messages for scanned images (reading each one when ids come from content)."""
    for entry in entries:
        where = redact_uri(entry.uri)
        try:
            msg_id = None
            if options.id_from == "content":
                msg_id = message_id_for_content(entry.read())
            yield Item(where, ImageMessage.upsert(entry.uri, id=msg_id, metadata=options.metadata))
        except InvalidMessage as exc:
            yield Item(where, error=str(exc))
        except (OSError, SourceUnavailable) as exc:
            yield Item(where, error=f"cannot read: {exc}")
        except Exception as exc:  # object-store client errors
            yield Item(where, error=f"cannot read: {type(exc).__name__}: {exc}")
