"""structlog set-up: JSON lines, console on a terminal, secrets redacted, message context."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import structlog

from consumer.observability.logging import (
    REDACTED,
    LogFormat,
    bind_message_context,
    clear_message_context,
    configure_logging,
    get_logger,
    message_context,
    redact_secrets,
    redact_text,
)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def redact(event: dict[str, Any]) -> dict[str, Any]:
    return redact_secrets(None, "info", dict(event))


def test_json_lines_parse_with_orjson() -> None:
    out = io.StringIO()
    assert configure_logging("info", "json", out) is LogFormat.JSON
    log = get_logger("consumer.test")
    log.info("batch written", rows=32, collection="images")
    log.warning("slow\nmultiline")
    lines = json_lines(out)
    assert len(lines) == 2  # one line per event, newlines escaped
    first = lines[0]
    assert first["event"] == "batch written"
    assert first["level"] == "info"
    assert first["logger"] == "consumer.test"
    assert first["rows"] == 32
    assert first["timestamp"].endswith("Z") and "T" in first["timestamp"]
    assert lines[1]["event"] == "slow\nmultiline"


def test_auto_picks_json_off_a_terminal_and_console_on_one() -> None:
    assert configure_logging("info", "auto", io.StringIO()) is LogFormat.JSON
    terminal = Terminal()
    assert configure_logging("info", "auto", terminal) is LogFormat.CONSOLE
    get_logger("consumer.test").info("hello people", rows=3)
    text = terminal.getvalue()
    assert "hello people" in text and "rows" in text
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(text.splitlines()[0])


def test_level_filters_events() -> None:
    out = io.StringIO()
    configure_logging("warning", "json", out)
    log = get_logger("consumer.test")
    log.info("hidden")
    log.debug("hidden too")
    log.error("shown")
    assert [line["event"] for line in json_lines(out)] == ["shown"]


def test_standard_library_records_are_rendered_and_redacted() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    logging.getLogger("pymilvus").warning(
        "retrying %s", "https://user:hunter2@milvus.example:443/v2?token=abc"
    )
    (line,) = json_lines(out)
    assert line["logger"] == "pymilvus" and line["level"] == "warning"
    assert "hunter2" not in line["event"] and "abc" not in line["event"]
    assert line["event"].startswith("retrying https://")


_ADOPTED_AFTER_IMPORT = """
import io, logging, sys
from consumer.observability.logging import configure_logging
out = io.StringIO()
configure_logging("info", "json", out)
assert "pymilvus" not in sys.modules, "configure_logging imported pymilvus"
logging.getLogger("pymilvus").setLevel(logging.ERROR)  # as a command sets it before the import
import pymilvus
lib = logging.getLogger("pymilvus")
assert lib.handlers == [] and lib.propagate, (lib.handlers, lib.propagate)
assert lib.level == logging.ERROR, lib.level
lib.warning("below the level")
lib.error("refused https://user:hunter2@milvus.example/")
logging.getLogger("pymilvus.milvus_client").info("through the root handler")
sys.stdout.write(out.getvalue())
"""


def test_pymilvus_loggers_are_adopted_when_it_is_imported_later() -> None:
    """configure_logging leaves pymilvus unimported (over a second of CPU; a search imports it
    on its second thread), and its import, whenever it comes, still ends with its records
    rendered and redacted by ours and the levels set before it kept."""
    proc = subprocess.run(
        [sys.executable, "-c", _ADOPTED_AFTER_IMPORT],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("pymilvus", "error"),
        ("pymilvus.milvus_client", "info"),
    ]
    assert "hunter2" not in lines[0]["event"]
    assert proc.stderr == ""  # pymilvus's own handler wrote nothing


def _log_library_failure(out: io.StringIO, level: str, logger: str) -> dict[str, Any]:
    configure_logging(level, "json", out)
    try:
        raise ConnectionError(
            "refresh failed:\n  endpoint https://sts.example/?X-Amz-Security-Token=abc"
        )
    except ConnectionError:
        logging.getLogger(logger).warning("Refreshing temporary credentials failed", exc_info=True)
    (line,) = json_lines(out)
    return line


def test_a_librarys_traceback_is_one_error_field_above_debug() -> None:
    """botocore logs an expected credential-refresh failure with its whole traceback: above DEBUG
    it is the exception's type and message on the one line, still redacted."""
    line = _log_library_failure(io.StringIO(), "info", "botocore.credentials")
    assert "exception" not in line
    assert line["error"].startswith("ConnectionError: refresh failed: endpoint https://sts")
    assert "abc" not in line["error"]


def test_debug_keeps_library_tracebacks_and_ours_are_always_kept() -> None:
    line = _log_library_failure(io.StringIO(), "debug", "botocore.credentials")
    assert "Traceback" in line["exception"] and "error" not in line
    ours = _log_library_failure(io.StringIO(), "info", "consumer.engine")
    assert "Traceback" in ours["exception"]


def test_configuring_twice_keeps_one_handler() -> None:
    out = io.StringIO()
    configure_logging("info", "json", io.StringIO())
    configure_logging("info", "json", out)
    get_logger("consumer.test").info("once")
    assert len(json_lines(out)) == 1


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "kafka_sasl_password",
        "sasl.password",
        "sasl.username",
        "ssl.key.password",
        "ssl.key.pem",
        "milvus_token",
        "api_key",
        "Authorization",
        "client-secret",
    ],
)
def test_secret_keys_are_redacted(key: str) -> None:
    assert redact({"event": "connecting", key: "s3cr3t"})[key] == REDACTED


def test_secrets_nested_in_dicts_and_lists_are_redacted() -> None:
    event = redact(
        {
            "event": "kafka config",
            "config": {
                "bootstrap.servers": "kafka:9092",
                "sasl.password": "s3cr3t",
                "nested": [{"token": "t0k3n", "port": 9092}],
            },
        }
    )
    assert event["config"]["bootstrap.servers"] == "kafka:9092"
    assert event["config"]["sasl.password"] == REDACTED
    assert event["config"]["nested"][0] == {"token": REDACTED, "port": 9092}


def test_presigned_query_strings_and_userinfo_are_removed() -> None:
    url = (
        "https://bucket.s3.amazonaws.com/photos/cat.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAEXAMPLE%2F20240101&X-Amz-Signature=deadbeef"
    )
    event = redact({"event": f"fetch failed for {url}", "uri": url, "id": "cat"})
    assert event["uri"] == f"https://bucket.s3.amazonaws.com/photos/cat.jpg?{REDACTED}"
    assert "X-Amz" not in event["event"] and "deadbeef" not in event["event"]
    assert event["event"].startswith("fetch failed for https://bucket.s3.amazonaws.com/photos/")
    assert event["id"] == "cat"
    assert (
        redact_text("http://alice:pw@minio:9000/b/k.png") == f"http://{REDACTED}@minio:9000/b/k.png"
    )
    assert redact_text("see http://host/a#access_token=x") == f"see http://host/a?{REDACTED}"


def test_plain_values_are_left_alone() -> None:
    event = {
        "event": "written",
        "topic": "images",
        "partition": 3,
        "offset": 42,
        "uri": "s3://bucket/key.jpg",
        "ok": True,
        "ratio": 0.5,
        "none": None,
    }
    assert redact(event) == event


def test_tracebacks_are_redacted_too() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    try:
        raise ValueError("GET https://cdn.example/a.jpg?sig=topsecret failed")
    except ValueError:
        get_logger("consumer.test").exception("fetch crashed")
    (line,) = json_lines(out)
    assert "ValueError" in line["exception"]
    assert "topsecret" not in line["exception"]


def test_message_context_binds_topic_partition_offset() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    log = get_logger("consumer.test")
    with message_context("images", 2, 1041):
        log.info("decoded")
    log.info("outside")
    bind_message_context("images", 5)
    log.info("bound")
    clear_message_context()
    log.info("cleared")
    decoded, outside, bound, cleared = json_lines(out)
    assert (decoded["topic"], decoded["partition"], decoded["offset"]) == ("images", 2, 1041)
    assert "topic" not in outside
    assert (bound["topic"], bound["partition"]) == ("images", 5) and "offset" not in bound
    assert "topic" not in cleared


def test_reconfiguring_switches_existing_loggers() -> None:
    log = get_logger("consumer.early")  # e.g. at module import, before the CLI configures
    first = io.StringIO()
    configure_logging("info", "json", first)
    log.info("as json")
    second = Terminal()
    configure_logging("info", "console", second)
    log.info("for people")
    assert json_lines(first)[0]["event"] == "as json"
    assert "for people" in second.getvalue()
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(second.getvalue().splitlines()[0])
