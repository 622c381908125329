"""file:// reads confined to the configured roots.

A URI's path is refused when it contains ``..``, when its real path (symlinks resolved) lies
outside every root, or when it names anything but a regular file. The file is then opened one
path component at a time from the root with ``O_NOFOLLOW``, so a symlink swapped in after the
check cannot lead outside the root, and a FIFO or device is never opened.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Final
from urllib.parse import unquote_to_bytes, urlsplit

from consumer.fetch.exceptions import FetchFailed, ForbiddenPath, NotFound, TooLarge
from consumer.fetch.policy import FetchPolicy
from schemas.redaction import redact_uri

_READ_BYTES: Final = 1024 * 1024
_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY: Final = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK: Final = getattr(os, "O_NONBLOCK", 0)


class FileReader:
    """Reads file:// URIs under a :class:`FetchPolicy`'s roots. Thread-safe (no shared state)."""

    def __init__(self, policy: FetchPolicy) -> None:
        self._roots = tuple(Path(os.path.realpath(root)) for root in policy.file_roots)
        self._max_bytes = policy.max_bytes

    def fetch(self, uri: str) -> bytes:
        """The bytes of the file ``uri`` names."""
        shown = redact_uri(uri)
        if not self._roots:
            raise ForbiddenPath(
                f"file:// URIs are refused because no file root is configured "
                f"(start the consumer with --file-root DIR): {shown}"
            )
        path = self._path_of(uri, shown)
        real = Path(os.path.realpath(path))
        root = next((r for r in self._roots if real.is_relative_to(r)), None)
        if root is None:
            raise ForbiddenPath(f"{shown} is outside every file root")
        parts = real.relative_to(root).parts
        if not parts:
            raise ForbiddenPath(f"{shown} is a directory, not a regular file")
        try:
            return self._read_beneath(root, parts, shown)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no such file: {shown}") from None
        except PermissionError:
            raise FetchFailed(f"permission denied: {shown}") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ForbiddenPath(f"{shown} changed into a symlink while being opened") from None
            raise FetchFailed(f"cannot read {shown}: {exc.strerror}") from None

    @staticmethod
    def _path_of(uri: str, shown: str) -> str:
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise ForbiddenPath(f"file:// URIs with a host are not supported: {shown}")
        if parts.query or parts.fragment or uri.rstrip().endswith(("?", "#")):
            raise ForbiddenPath(
                f"file:// URIs may not carry a query or fragment (percent-encode '?' and '#'): "
                f"{shown}"
            )
        path = os.fsdecode(unquote_to_bytes(parts.path))
        if "\x00" in path:
            raise ForbiddenPath(f"file:// path with a NUL byte: {shown}")
        if not path.startswith("/"):
            raise ForbiddenPath(f"file:// path is not absolute: {shown}")
        if ".." in path.split("/"):
            raise ForbiddenPath(f"path traversal ('..') refused: {shown}")
        return path

    def _read_beneath(self, root: Path, parts: tuple[str, ...], shown: str) -> bytes:
        """Open ``root/parts...`` without following any symlink, and read it under the limit."""
        dir_fd = os.open(root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
        try:
            for part in parts[:-1]:
                try:
                    next_fd = os.open(
                        part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=dir_fd
                    )
                except NotADirectoryError:
                    if stat.S_ISLNK(os.stat(part, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                        raise ForbiddenPath(
                            f"{shown} changed into a symlink while being opened"
                        ) from None
                    raise
                os.close(dir_fd)
                dir_fd = next_fd
            name = parts[-1]
            before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISLNK(before.st_mode):
                raise ForbiddenPath(f"{shown} changed into a symlink while being opened")
            if not stat.S_ISREG(before.st_mode):
                raise ForbiddenPath(f"{shown} is not a regular file")
            if before.st_size > self._max_bytes:
                raise TooLarge(
                    f"{shown} has {before.st_size} bytes, more than the {self._max_bytes} allowed"
                )
            fd = os.open(name, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        try:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (
                before.st_dev,
                before.st_ino,
            ):
                raise ForbiddenPath(f"{shown} changed while being opened")
            return self._read_bounded(fd, shown, opened.st_size)
        finally:
            os.close(fd)

    def _read_bounded(self, fd: int, shown: str, size: int = 0) -> bytes:
        """The file's bytes, at most the limit. A file of the ``size`` its ``fstat`` gave is read
        in one ``read`` into its final ``bytes`` (no chunks to join: photo-sized files are
        megabytes); one that grew meanwhile goes on in chunks, still cut at the limit."""
        first = os.read(fd, min(max(size, _READ_BYTES), self._max_bytes) + 1)
        if len(first) > self._max_bytes:
            raise TooLarge(f"{shown} is larger than the {self._max_bytes} bytes allowed")
        chunk = os.read(fd, min(_READ_BYTES, self._max_bytes + 1 - len(first))) if first else b""
        if not chunk:
            return first
        body = bytearray(first)
        while chunk:
            body.extend(chunk)
            if len(body) > self._max_bytes:
                raise TooLarge(f"{shown} is larger than the {self._max_bytes} bytes allowed")
            chunk = os.read(fd, min(_READ_BYTES, self._max_bytes + 1 - len(body)))
        return bytes(body)
