"""structlog set-up: JSON lines (orjson) for machines, readable console output for people.

Every event goes through :func:`redact_secrets`, including the log records of libraries that
use the standard :mod:`logging` module, so credentials and presigned URL signatures are never
written. The topic, partition and offset of the message being handled are bound with
contextvars (:func:`message_context`) and appear on every event logged inside.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import re
import sys
import types
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import StrEnum
from typing import Any, Final, TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED: Final = "[REDACTED]"

#: Keys whose values are secrets, wherever they appear (normalized: lower case, ``-`` -> ``_``).
_SECRET_KEY = re.compile(
    r"password|passwd|passphrase|secret|token|api_?key|authorization|credential|private_?key"
    r"|cookie|sasl|ssl[._]key",
)
#: A URL inside any string: scheme, then everything up to whitespace or a quote/bracket.
_URL = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>[^\s\"'<>`]+)")
#: The keys structlog itself adds; never redacted by name.
_RESERVED_KEYS: Final = frozenset({"event", "level", "logger", "timestamp"})
_MAX_DEPTH: Final = 8
#: Libraries that log one INFO line per request; kept to warnings so probes cannot flood logs.
_CHATTY_LOGGERS: Final = ("httpx", "httpcore", "urllib3")
_HANDLER_MARK: Final = "_image_embedder_handler"


class LogFormat(StrEnum):
    """``--log-format``: ``auto`` picks console on a terminal, JSON otherwise."""

    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


def is_secret_key(key: str) -> bool:
    """Whether a mapping key names a secret (``sasl.password``, ``milvus_token``, ...)."""
    return bool(_SECRET_KEY.search(key.lower().replace("-", "_")))


def _redact_url(match: re.Match[str]) -> str:
    scheme, rest = match.group("scheme"), match.group("rest")
    cut = len(rest)
    for sep in ("/", "?", "#"):
        pos = rest.find(sep)
        if pos != -1:
            cut = min(cut, pos)
    authority, tail = rest[:cut], rest[cut:]
    if "@" in authority:
        authority = f"{REDACTED}@{authority.rsplit('@', 1)[1]}"
    for sep in ("?", "#"):
        pos = tail.find(sep)
        if pos != -1:
            tail = f"{tail[:pos]}?{REDACTED}"
            break
    return f"{scheme}{authority}{tail}"


def redact_text(text: str) -> str:
    """Remove the userinfo and the query string (and fragment) of every URL inside ``text``."""
    if "://" not in text:
        return text
    return _URL.sub(_redact_url, text)


def _redact_value(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth >= _MAX_DEPTH:
        return REDACTED
    if isinstance(value, Mapping):
        return {
            key: (
                REDACTED
                if isinstance(key, str) and is_secret_key(key)
                else _redact_value(item, depth + 1)
            )
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(item, depth + 1) for item in value]
    # Anything else is rendered with str() by the renderers: redact that text instead.
    return redact_text(str(value))


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: hide secret-named keys and URL credentials/query strings."""
    for key, value in list(event_dict.items()):
        if key.startswith("_"):  # structlog internals such as ``_record``
            continue
        if key not in _RESERVED_KEYS and is_secret_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_value(value, 0)
    return event_dict


def _orjson_dumps(obj: Any, **_kwargs: Any) -> str:
    return orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


#: Loggers of this project: their tracebacks are always kept (they are logged on purpose).
_OWN_LOGGERS: Final = ("consumer", "producer", "schemas", "serving", "devstack", "bench")


def _shorten_library_tracebacks(level: int) -> Processor:
    """Above DEBUG, a library's traceback (botocore's failed credential refresh, grpc's
    reconnects, pymilvus's retries: expected conditions the service reports itself) becomes one
    ``error`` field with the exception's type and message; ``--log-level DEBUG`` keeps it whole."""

    def shorten(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        if level <= logging.DEBUG or not event_dict.get("exc_info"):
            return event_dict
        name = str(event_dict.get("logger") or "")
        if name.split(".", 1)[0] in _OWN_LOGGERS:
            return event_dict
        exc_info = event_dict.pop("exc_info")
        exc = exc_info[1] if isinstance(exc_info, tuple) else exc_info
        if isinstance(exc, BaseException):
            text = " ".join(str(exc).split())
            event_dict.setdefault(
                "error", f"{type(exc).__name__}: {text}" if text else type(exc).__name__
            )
        return event_dict

    return shorten


def _shared_processors(level: int = logging.INFO) -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        _shorten_library_tracebacks(level),
        # Tracebacks become text before redaction, so URLs inside them are redacted too.
        structlog.processors.format_exc_info,
        redact_secrets,
    ]


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r}")
    return number


def configure_logging(
    level: str | int = "info",
    log_format: LogFormat | str = LogFormat.AUTO,
    stream: TextIO | None = None,
) -> LogFormat:
    """Route structlog and standard-library logging to ``stream`` (default: stderr).

    ``auto`` renders for a person when ``stream`` is a terminal and as JSON lines otherwise.
    Calling it again replaces the previous set-up. Returns the format actually used.
    """
    out = stream if stream is not None else sys.stderr
    chosen = LogFormat(log_format)
    if chosen is LogFormat.AUTO:
        chosen = LogFormat.CONSOLE if out.isatty() else LogFormat.JSON
    renderer: Processor
    if chosen is LogFormat.JSON:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())

    shared = _shared_processors(_level_number(level))
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a module-level logger used before this call would keep the old set-up.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_level_number(level))
    _adopt_library_loggers()
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    return chosen


#: Libraries that install handlers of their own at import (and stop propagation), which would
#: bypass the JSON rendering and the secret redaction.
_SELF_CONFIGURED_LOGGERS = ("pymilvus", "pymilvus.milvus_client", "pymilvus.bulk_writer")
#: The pymilvus module whose import configures those loggers (``logging.config.dictConfig``).
_PYMILVUS_LOGGING_MODULE: Final = "pymilvus.settings"


def _adopt_library_loggers() -> None:
    """Send pymilvus's records through the root handler (rendered and redacted like ours): now
    when pymilvus is imported, else right after its import configures its loggers. Importing it
    here would cost over a second of CPU to every command, on the thread that configures logging
    (``search`` imports it on a second thread while the main thread starts JAX)."""
    if _PYMILVUS_LOGGING_MODULE in sys.modules:
        _undo_library_handlers({})
    elif not any(isinstance(finder, _AdoptOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AdoptOnImport())


def _undo_library_handlers(levels: Mapping[str, int]) -> None:
    """Remove pymilvus's own handlers and let its records propagate; the ``levels`` set on its
    loggers before its import configured them are put back (a level set by the command wins
    over pymilvus's defaults, whichever was first)."""
    for name in _SELF_CONFIGURED_LOGGERS:
        lib = logging.getLogger(name)
        for old in list(lib.handlers):
            lib.removeHandler(old)
        lib.propagate = True
        if levels.get(name, logging.NOTSET) != logging.NOTSET:
            lib.setLevel(levels[name])


class _AdoptOnImport(importlib.abc.MetaPathFinder):
    """Finds no module itself: gives ``pymilvus.settings`` a loader that adopts pymilvus's
    loggers once the module has run (see :func:`_adopt_library_loggers`)."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _PYMILVUS_LOGGING_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec: importlib.machinery.ModuleSpec | None = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _ThenAdopt(spec.loader)
                return spec
        return None


class _ThenAdopt(importlib.abc.Loader):
    """A module's own loader, then :func:`_undo_library_handlers` once the module ran."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        levels = {name: logging.getLogger(name).level for name in _SELF_CONFIGURED_LOGGERS}
        self.loader.exec_module(module)
        _undo_library_handlers(levels)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... of the real one
        if name == "loader":  # not set yet (a copy): never look it up through itself
            raise AttributeError(name)
        return getattr(self.loader, name)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    """A structlog logger named ``name`` (the ``logger`` field of each event)."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


def bind_message_context(topic: str, partition: int, offset: int | None = None) -> None:
    """Bind topic/partition/offset to every event logged afterwards in this context."""
    values: dict[str, Any] = {"topic": topic, "partition": partition}
    if offset is not None:
        values["offset"] = offset
    structlog.contextvars.bind_contextvars(**values)


def clear_message_context() -> None:
    """Forget what :func:`bind_message_context` bound."""
    structlog.contextvars.unbind_contextvars("topic", "partition", "offset")


@contextmanager
def message_context(topic: str, partition: int, offset: int | None = None) -> Iterator[None]:
    """Bind topic/partition/offset for the body of a ``with`` block, then restore."""
    values: dict[str, Any] = {"topic": topic, "partition": partition}
    if offset is not None:
        values["offset"] = offset
    with structlog.contextvars.bound_contextvars(**values):
        yield
