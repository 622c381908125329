"""The producer's pure parts: inputs, scanning, settings, filters, the CLI's dry run."""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from PIL import Image
from typer.testing import CliRunner

from producer import publisher as pub
from producer.cli import app
from producer.exceptions import InvalidInput, SourceUnavailable
from producer.redrive import default_group, matches, parse_where
from producer.sources import (
    MessageOptions,
    image_kind,
    item_from_line,
    items_from_lines,
    items_from_scan,
    read_uri_bytes,
    scan,
)
from schemas import decode_message, message_id_for_content, message_id_for_uri

ROOT = Path(__file__).resolve().parents[2]


def _image(path: Path, fmt: str = "PNG") -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (10, 20, 30)).save(path, format=fmt)
    return path.read_bytes()


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    _image(root / "b.jpg", "JPEG")
    _image(root / "a.png")
    _image(root / "sub" / "z w.gif", "GIF")
    _image(root / "sub" / "deeper" / "c.webp", "WEBP")
    _image(root / "no-extension", "BMP")
    _image(root / "img.tif", "TIFF")
    _image(root / ".hidden" / "x.png")
    _image(root / ".dot.png")
    (root / "notes.jpg").write_text("not an image")
    (root / "readme.txt").write_text("hello")
    os.symlink(root / "sub", root / "link-to-sub")  # a symlinked folder is not followed
    return root


# -- sources ----------------------------------------------------------------------------------


def test_image_kind() -> None:
    assert image_kind(b"\xff\xd8\xff\xe0rest") == "jpeg"
    assert image_kind(b"\x89PNG\r\n\x1a\n") == "png"
    assert image_kind(b"GIF89a") == "gif"
    assert image_kind(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert image_kind(b"II*\x00") == "tiff"
    assert image_kind(b"BM" + b"\x00" * 12) == "bmp"
    assert image_kind(b"hello world") is None
    assert image_kind(b"") is None


def test_scan_directory_sorted_recursive_by_magic(image_tree: Path) -> None:
    uris = [e.uri for e in scan(str(image_tree))]
    base = image_tree.resolve().as_uri()
    assert uris == [
        f"{base}/a.png",
        f"{base}/b.jpg",
        f"{base}/img.tif",
        f"{base}/no-extension",
        f"{base}/sub/deeper/c.webp",
        f"{base}/sub/z%20w.gif",
    ]
    # the same through a file:// URI of the folder
    assert [e.uri for e in scan(image_tree.resolve().as_uri())] == uris


def test_scan_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailable, match="not a directory"):
        list(scan(str(tmp_path / "nope")))


def test_scan_items_with_content_ids(image_tree: Path) -> None:
    items = list(items_from_scan(scan(str(image_tree)), MessageOptions(id_from="content")))
    assert all(i.message is not None for i in items)
    first = items[0].message
    assert first is not None
    assert first.id == message_id_for_content((image_tree / "a.png").read_bytes())


def test_line_forms(tmp_path: Path) -> None:
    opts = MessageOptions(metadata={"src": "cli", "k": "cli"})
    assert item_from_line("   ", "f:1", opts) is None
    assert item_from_line("# comment", "f:2", opts) is None
    item = item_from_line(" https://e.com/a.jpg \n", "f:3", opts)
    assert item is not None and item.message is not None
    assert item.message.id == message_id_for_uri("https://e.com/a.jpg")
    assert item.message.metadata == {"src": "cli", "k": "cli"}
    item = item_from_line(
        '{"uri": "s3://bucket/k.png", "id": "own", "metadata": {"k": "own"}}', "f:4", opts
    )
    assert item is not None and item.message is not None
    assert (item.message.id, item.message.metadata) == ("own", {"src": "cli", "k": "own"})
    item = item_from_line('{"op": "delete", "id": "gone"}', "f:5", opts)
    assert item is not None and item.message is not None and item.message.op == "delete"


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("/data/a.jpg", "file:///absolute/path"),
        ("ftp://e.com/a.jpg", "scheme 'ftp' is not allowed"),
        ('{"uri": 1}', "uri: must be a string"),
        ("{not json", "not JSON"),
        ('{"uri": "https://e.com/a", "bogus": 1}', "bogus: unknown field"),
    ],
)
def test_bad_lines_are_items_with_errors(line: str, needle: str) -> None:
    item = item_from_line(line, "in:7", MessageOptions())
    assert item is not None and item.message is None
    assert item.error is not None and needle in item.error
    assert item.where == "in:7"


def test_lines_are_numbered() -> None:
    items = list(items_from_lines(["https://e.com/a", "", "nope"], "list.txt", MessageOptions()))
    assert [i.where for i in items] == ["list.txt:1", "list.txt:3"]


def test_content_id_from_file_uri(tmp_path: Path) -> None:
    data = _image(tmp_path / "a b.png")
    uri = (tmp_path / "a b.png").as_uri()
    assert read_uri_bytes(uri) == data
    item = item_from_line(uri, "x", MessageOptions(id_from="content"))
    assert item is not None and item.message is not None
    assert item.message.id == "sha256-" + hashlib.sha256(data).hexdigest()
    missing = item_from_line(
        (tmp_path / "missing.png").as_uri(), "y", MessageOptions(id_from="content")
    )
    assert missing is not None and missing.error is not None and "cannot read" in missing.error


def test_read_uri_bytes_is_bounded(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 100)
    with pytest.raises(SourceUnavailable, match="larger than 10 bytes"):
        read_uri_bytes((tmp_path / "big").as_uri(), max_bytes=10)


# -- settings, secrets, filters ---------------------------------------------------------------


def test_parse_settings_never_echoes_values() -> None:
    assert pub.parse_settings(["a=b", "sasl.password=x=y"]) == {"a": "b", "sasl.password": "x=y"}
    with pytest.raises(InvalidInput) as info:
        pub.parse_settings(["hunter2"])
    assert "hunter2" not in str(info.value)


def test_mask_secrets() -> None:
    config = {"sasl.password": "hunter2", "ssl.key.password": "pw2", "client.id": "visible"}
    text = "auth failed for hunter2 / pw2 / visible"
    assert pub.mask_secrets(text, config) == "auth failed for [redacted] / [redacted] / visible"
    assert pub.is_secret_setting("sasl.oauthbearer.client.secret")
    assert pub.is_secret_setting("sasl.jaas.config")
    assert not pub.is_secret_setting("bootstrap.servers")


def test_invalid_kafka_setting_is_input_error_without_value() -> None:
    with pytest.raises(InvalidInput) as info:
        pub.Publisher(
            "127.0.0.1:1", kafka_config={"sasl.password": "hunter2", "no.such.setting": "hunter2"}
        )
    assert "hunter2" not in str(info.value)


def test_rate_limiter_paces_without_bursts(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(pub.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(pub.time, "sleep", sleep)
    limiter = pub.RateLimiter(10.0)
    stamps = []
    for _ in range(5):
        limiter.wait()
        stamps.append(clock[0])
    assert [round(b - a, 6) for a, b in itertools.pairwise(stamps)] == [0.1] * 4
    clock[0] += 10.0  # a long stall does not earn a burst afterwards
    limiter.wait()
    t0 = clock[0]
    limiter.wait()
    assert round(clock[0] - t0, 6) == 0.1
    with pytest.raises(InvalidInput):
        pub.RateLimiter(0)


def test_where_filters() -> None:
    where = parse_where(["error.type=not_found", "error.type=server_error", "error.stage=fetch"])
    assert where == {"error.type": {"not_found", "server_error"}, "error.stage": {"fetch"}}
    assert matches([("error.type", b"server_error"), ("error.stage", b"fetch")], where)
    assert not matches([("error.type", b"server_error"), ("error.stage", b"decode")], where)
    assert not matches([], where)
    assert matches([], {})
    with pytest.raises(InvalidInput):
        parse_where(["error.type"])


def test_default_group_depends_on_filter() -> None:
    plain = default_group("t.dlq", {})
    a = default_group("t.dlq", parse_where(["error.type=a", "error.stage=fetch"]))
    b = default_group("t.dlq", parse_where(["error.stage=fetch", "error.type=a"]))
    c = default_group("t.dlq", parse_where(["error.type=b"]))
    assert plain == "t.dlq.redrive"
    assert a == b != c
    assert a.startswith("t.dlq.redrive.")


# -- CLI without a broker -------------------------------------------------------------------------

runner = CliRunner()


def test_cli_dry_run_prints_messages(tmp_path: Path) -> None:
    listing = tmp_path / "uris.txt"
    listing.write_text("# list\nhttps://e.com/1.jpg\n\n" + '{"uri": "file:///x.png", "id": "x"}\n')
    result = runner.invoke(
        app,
        [
            "publish",
            "--topic",
            "t",
            "--dry-run",
            "-m",
            "batch=7",
            "--file",
            str(listing),
            "https://e.com/0.jpg",
            "-",
        ],
        input="https://e.com/2.jpg\n",
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    msgs = [decode_message(None, line.encode()) for line in lines]
    assert [m.uri for m in msgs] == [
        "https://e.com/0.jpg",
        "https://e.com/1.jpg",
        "file:///x.png",
        "https://e.com/2.jpg",
    ]
    assert all(m.metadata == {"batch": "7"} for m in msgs)
    assert msgs[2].id == "x"
    assert "nothing sent" in result.stderr


def test_cli_reports_invalid_input_and_fails(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["publish", "--topic", "t", "--dry-run", "https://e.com/a.jpg", "ftp://x/y"]
    )
    assert result.exit_code == 1
    assert "invalid argument:2: uri: scheme 'ftp' is not allowed" in result.stderr
    assert len([line for line in result.stdout.splitlines() if line.startswith("{")]) == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["publish", "--topic", "t"], "nothing to publish"),
        (["publish", "--topic", "t", "--id-from", "name", "https://e.com/a"], "--id-from"),
        (["publish", "--topic", "t", "-m", "novalue", "https://e.com/a"], "--metadata"),
        (["publish", "--topic", "t", "--file", "/nonexistent/list.txt"], "no such file"),
        (["scan", "/nonexistent/folder", "--topic", "t"], "not a directory"),
    ],
)
def test_cli_input_errors(args: list[str], needle: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert needle in result.stderr


def test_cli_scan_dry_run(image_tree: Path) -> None:
    result = runner.invoke(
        app, ["scan", str(image_tree), "--topic", "t", "--dry-run", "--id-from", "content"]
    )
    assert result.exit_code == 0, result.output
    docs = [orjson.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(docs) == 6
    assert all(d["id"].startswith("sha256-") for d in docs)


def test_cli_main_module_runs() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "producer",
            "publish",
            "--topic",
            "t",
            "--dry-run",
            "https://e.com/a.jpg",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout)["uri"] == "https://e.com/a.jpg"


def test_stopped_broker_fails_clearly_within_deadline() -> None:
    """Nothing listens on the port: non-zero exit naming the broker, within the deadline."""
    from devstack import free_port

    port = free_port()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "producer",
            "publish",
            "--topic",
            "t",
            "--bootstrap-servers",
            f"127.0.0.1:{port}",
            "--timeout-s",
            "5",
            "https://e.com/a.jpg",
            "https://e.com/b.jpg",
        ],
        env={**os.environ, "IMAGE_EMBEDDER_KAFKA_SASL_PASSWORD": "hunter2"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,  # generous: the command itself gives up after about 5 s
        check=False,
    )
    assert proc.returncode == 1
    assert f"Kafka at 127.0.0.1:{port}" in proc.stderr
    assert proc.stderr.count("not delivered: key=") == 2
    assert "0 of 2 messages" in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout


def test_a_password_flag_is_refused() -> None:
    """A secret as a command-line flag (visible in the process list) is refused, unechoed."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "producer",
            "publish",
            "--topic",
            "t",
            "--bootstrap-servers",
            "127.0.0.1:1",
            "--kafka-config",
            "sasl.password=hunter2",
            "https://e.com/a.jpg",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert "secrets are not accepted as command-line flags" in proc.stderr
    assert "_FILE" in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout


def test_kafka_settings_from_a_password_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The producer reads the consumer's Kafka settings: the password from a mounted file."""
    from producer.connection import kafka_settings

    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("IMAGE_EMBEDDER_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("IMAGE_EMBEDDER_KAFKA_SASL_USERNAME", "embedder")
    monkeypatch.setenv("IMAGE_EMBEDDER_KAFKA_SASL_PASSWORD_FILE", str(secret))
    conf = kafka_settings(["linger.ms=7"])
    assert conf["sasl.password"] == "s3cret"
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["linger.ms"] == "7"
    assert "bootstrap.servers" not in conf
