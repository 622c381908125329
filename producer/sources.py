"""Where messages come from: URI lists, JSON lines, directory scans and ``s3://`` listings.

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
#: ``--storage-option`` names, the consumer's ``s3_*`` settings with or without the prefix.
STORAGE_OPTIONS: Final = ("endpoint_url", "region", "path_style", "requester_pays")


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
    """The bytes behind ``uri`` (file, http(s) or s3), at most ``max_bytes``.

    Raises :class:`SourceUnavailable` with a redacted URI when it cannot be read.
    """
    scheme = urlsplit(uri).scheme.lower()
    try:
        if scheme == "file":
            with Path(file_uri_to_path(uri)).open("rb") as stream:
                data = _read_bounded(stream, max_bytes)
        elif scheme in ("http", "https"):
            data = _read_http(uri, max_bytes, timeout_s)
        elif scheme == "s3":
            data = _read_s3(uri, max_bytes, storage_options or {})
        else:
            raise InvalidInput(f"cannot read {scheme}:// URIs here: {redact_uri(uri)}")
    except (SourceUnavailable, InvalidInput):
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


def s3_client(storage_options: Mapping[str, Any]) -> Any:
    """A botocore S3 client configured like the consumer's (same settings, same library).

    ``storage_options`` (from ``--storage-option``) win over ``IMAGE_EMBEDDER_S3_*`` variables;
    without an endpoint, ``AWS_ENDPOINT_URL`` or AWS applies. Credentials come from the AWS
    chain (environment, profiles, SSO, web identity, instance role), never from options.
    """
    try:
        from consumer.fetch.policy import FetchPolicy
        from consumer.fetch.s3 import make_client
    except ImportError as exc:
        raise InvalidInput(f"s3:// needs botocore: {exc}") from None
    values: dict[str, Any] = {}
    for name in STORAGE_OPTIONS:
        env = os.environ.get(f"IMAGE_EMBEDDER_S3_{name.upper()}", "").strip()
        if env:
            values[name] = env
    for raw_name, value in storage_options.items():
        name = raw_name.lower().removeprefix("s3_")
        if name not in STORAGE_OPTIONS:
            known = ", ".join(STORAGE_OPTIONS)
            raise InvalidInput(f"unknown --storage-option {raw_name!r} (known: {known})")
        values[name] = value
    for flag in ("path_style", "requester_pays"):
        if flag in values and not isinstance(values[flag], bool):
            text = str(values[flag]).strip().lower()
            if text not in ("true", "false", "1", "0", "yes", "no"):
                raise InvalidInput(f"--storage-option {flag} must be true or false")
            values[flag] = text in ("true", "1", "yes")
    policy = FetchPolicy(
        s3_endpoint_url=values.get("endpoint_url") or None,
        s3_region=values.get("region") or None,
        s3_path_style=bool(values.get("path_style", False)),
        s3_requester_pays=bool(values.get("requester_pays", False)),
    )
    return make_client(policy), policy.s3_requester_pays


def _read_s3(uri: str, max_bytes: int, storage_options: Mapping[str, Any]) -> bytes:
    from consumer.fetch.s3 import parse_s3_uri

    client, requester_pays = s3_client(storage_options)
    obj = parse_s3_uri(uri)
    return _s3_object_reader(client, obj.bucket, obj.key, obj.version_id, requester_pays)()


def _s3_object_reader(
    client: Any, bucket: str, key: str, version_id: str | None, requester_pays: bool
) -> Callable[[], bytes]:
    def read() -> bytes:
        params: dict[str, str] = {"Bucket": bucket, "Key": key}
        if version_id is not None:
            params["VersionId"] = version_id
        if requester_pays:
            params["RequestPayer"] = "requester"
        response = client.get_object(**params)
        size = response.get("ContentLength")
        if isinstance(size, int) and size > MAX_CONTENT_BYTES:
            response["Body"].close()
            raise SourceUnavailable(f"larger than {MAX_CONTENT_BYTES} bytes")
        return _read_bounded(response["Body"], MAX_CONTENT_BYTES)

    return read


def file_uri_to_path(uri: str) -> str:
    """The local path of a ``file://`` URI (percent-decoded)."""
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise InvalidInput(f"file URI with a host is not supported: {redact_uri(uri)}")
    return unquote(parts.path)


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
    """Images under ``source``: a local directory (or ``file://`` URI) or ``s3://bucket/prefix``.

    Local files are recognised by their leading bytes (any name); objects in a store by their
    extension. Both are walked recursively, in sorted order, skipping hidden entries (``.*``).
    """
    scheme = urlsplit(source).scheme.lower() if "://" in source else ""
    if scheme in ("", "file"):
        root = Path(file_uri_to_path(source) if scheme == "file" else source)
        yield from scan_directory(root)
    elif scheme == "s3":
        yield from scan_s3(source, storage_options or {})
    else:
        raise InvalidInput(
            f"cannot scan {scheme}:// (a directory, a file:// URI or s3://bucket/prefix)"
        )


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


def scan_s3(url: str, storage_options: Mapping[str, Any]) -> Iterator[ScanEntry]:
    """Objects with an image extension under ``s3://bucket/prefix``, sorted by key.

    The prefix is a plain key prefix (``s3://b/set1`` also lists ``set10/...``; end it with ``/``
    for one folder). Keys are published percent-encoded, exactly (``a//b`` stays ``a//b``).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    parts = urlsplit(url)
    bucket = parts.netloc
    if not bucket or parts.query or parts.fragment:
        raise InvalidInput(f"expected s3://bucket[/prefix]: {redact_uri(url)}")
    prefix = unquote(parts.path[1:])
    client, requester_pays = s3_client(storage_options)
    params: dict[str, str] = {"Bucket": bucket, "Prefix": prefix}
    if requester_pays:
        params["RequestPayer"] = "requester"
    try:
        keys = sorted(
            obj["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(**params)
            for obj in page.get("Contents", [])
        )
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise SourceUnavailable(f"cannot list {redact_uri(url)}: {code or exc}") from None
    except BotoCoreError as exc:  # credentials, network: one clear line
        raise SourceUnavailable(
            f"cannot list {redact_uri(url)}: {type(exc).__name__}: {exc}"
        ) from None
    for key in keys:
        name = key.rsplit("/", 1)[-1]
        if name.startswith(".") or not has_image_extension(name):
            continue
        uri = f"s3://{bucket}/" + quote(key, safe="/")
        yield ScanEntry(uri, _s3_object_reader(client, bucket, key, None, requester_pays))


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
