"""The producer against a real Kafka broker: publish, scan, create-topic, redrive."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource
from PIL import Image
from typer.testing import CliRunner

from producer.cli import app
from producer.publisher import Publisher
from producer.redrive import RedriveOptions, Redriver, default_group
from producer.topics import create_topics
from schemas import (
    ErrorType,
    ImageMessage,
    Stage,
    dead_letter_headers,
    decode_message,
    message_id_for_uri,
)
from schemas.deadletter import header_value
from tests.producer.kafka_records import end_offsets, read_all
from tests.support.kafka import committed_offsets

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _retention_ms(bootstrap: str, topic: str) -> str:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    return admin.describe_configs([resource])[resource].result(30)["retention.ms"].value


# -- publish ------------------------------------------------------------------------------------


def test_publisher_publishes_thousands_with_keys(kafka_bootstrap: str, unique_name: str) -> None:
    create_topics(kafka_bootstrap, unique_name, partitions=3, replication_factor=1)
    messages = [
        ImageMessage.upsert(f"https://img.example/{i}.jpg", metadata={"i": i}) for i in range(3000)
    ]
    with Publisher(kafka_bootstrap, compression="lz4") as publisher:
        publisher.send_all(unique_name, messages)
        result = publisher.wait(60)
    assert result.ok and result.delivered == 3000

    records = read_all(kafka_bootstrap, unique_name)
    assert len(records) == 3000
    by_id = {m.id: m for m in messages}
    for record in records:
        msg = decode_message(record.key, record.value)
        assert record.key == msg.id.encode()
        assert by_id[msg.id] == msg
    assert {decode_message(r.key, r.value).id for r in records} == set(by_id)
    # one id always lands in one partition (the key decides)
    partitions: dict[bytes | None, set[int]] = {}
    for r in records:
        partitions.setdefault(r.key, set()).add(r.partition)
    assert all(len(p) == 1 for p in partitions.values())
    assert len({r.partition for r in records}) == 3


def test_cli_publish_arguments_file_and_stdin(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    listing = tmp_path / "list.jsonl"
    listing.write_text(
        "https://img.example/f1.jpg\n"
        '{"uri": "https://img.example/f2.jpg", "id": "custom-2", "metadata": {"n": 2}}\n'
        '{"op": "delete", "id": "old-1"}\n'
    )
    result = runner.invoke(
        app,
        [
            "publish",
            "--topic",
            unique_name,
            "--bootstrap-servers",
            kafka_bootstrap,
            "--file",
            str(listing),
            "-m",
            "source=test",
            "https://img.example/a1.jpg",
            "-",
        ],
        input="https://img.example/s1.jpg\n",
    )
    assert result.exit_code == 0, result.output
    assert "published 5 of 5 messages" in result.stderr

    records = read_all(kafka_bootstrap, unique_name)
    msgs = {decode_message(r.key, r.value).id: decode_message(r.key, r.value) for r in records}
    assert all(r.key == decode_message(r.key, r.value).id.encode() for r in records)
    assert set(msgs) == {
        message_id_for_uri("https://img.example/a1.jpg"),
        message_id_for_uri("https://img.example/f1.jpg"),
        "custom-2",
        "old-1",
        message_id_for_uri("https://img.example/s1.jpg"),
    }
    assert msgs["custom-2"].metadata == {"source": "test", "n": 2}
    assert msgs["old-1"].op == "delete"


def test_cli_scan_directory(kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> None:
    for i, name in enumerate(["b.jpg", "a.png", "sub/c.jpg"]):
        path = tmp_path / "imgs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (i, i, i)).save(path)
    (tmp_path / "imgs" / "notes.txt").write_text("x")
    result = runner.invoke(
        app,
        [
            "scan",
            str(tmp_path / "imgs"),
            "--topic",
            unique_name,
            "--bootstrap-servers",
            kafka_bootstrap,
        ],
    )
    assert result.exit_code == 0, result.output
    uris = [orjson.loads(r.value)["uri"] for r in read_all(kafka_bootstrap, unique_name)]
    base = (tmp_path / "imgs").resolve().as_uri()
    assert uris == [
        f"{base}/a.png",
        f"{base}/b.jpg",
        f"{base}/sub/c.jpg",
    ]  # one partition: in order


def test_cli_dry_run_sends_nothing(kafka_bootstrap: str, unique_name: str) -> None:
    create_topics(kafka_bootstrap, unique_name, partitions=1, replication_factor=1)
    result = runner.invoke(
        app,
        ["publish", "--topic", unique_name, "--bootstrap-servers", kafka_bootstrap, "--dry-run"]
        + [f"https://img.example/{i}.jpg" for i in range(5)],
    )
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 5
    assert end_offsets(kafka_bootstrap, unique_name) == {0: 0}


def _publish_paced(bootstrap: str, topic: str) -> None:
    """Six messages at --rate 20 into a one-partition topic; each is stamped (CreateTime) when
    it is produced, so the gaps between the stamps are the pacing, whatever start-up took."""
    create_topics(bootstrap, topic, partitions=1, replication_factor=1)
    result = runner.invoke(
        app,
        ["publish", "--topic", topic, "--bootstrap-servers", bootstrap, "--rate", "20"]
        + [f"https://img.example/{i}.jpg" for i in range(6)],
    )
    assert result.exit_code == 0, result.output
    stamps = [r.timestamp_ms for r in read_all(bootstrap, topic)]
    assert len(stamps) == 6
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    # 1/20 s apart, less 1 ms for the stamps' millisecond resolution
    assert min(gaps) >= 49, f"NOT PACED: gaps between produce times {gaps} ms"


def test_cli_rate_limits_and_delivers(kafka_bootstrap: str, unique_name: str) -> None:
    _publish_paced(kafka_bootstrap, unique_name)


def test_rate_check_fails_without_pacing(
    kafka_bootstrap: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above catches a publisher that does not pace (a test of the test)."""
    import producer.publisher

    monkeypatch.setattr(producer.publisher.RateLimiter, "wait", lambda self: None)
    with pytest.raises(AssertionError, match="NOT PACED"):
        _publish_paced(kafka_bootstrap, unique_name)


# -- create-topic -------------------------------------------------------------------------------


def test_create_topic_and_dlq_idempotent(kafka_bootstrap: str, unique_name: str) -> None:
    args = ["create-topic", unique_name, "--partitions", "3", "--replication-factor", "1"]
    args += ["--bootstrap-servers", kafka_bootstrap, "--dlq-retention-ms", "86400000"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert f"created {unique_name}: 3 partitions" in first.stdout
    assert f"created {unique_name}.dlq: 3 partitions" in first.stdout
    assert end_offsets(kafka_bootstrap, unique_name).keys() == {0, 1, 2}
    assert _retention_ms(kafka_bootstrap, f"{unique_name}.dlq") == "86400000"

    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert f"exists {unique_name}: 3 partitions" in again.stdout

    longer = runner.invoke(app, [*args[:-1], "172800000"])
    assert longer.exit_code == 0, longer.output
    assert f"updated {unique_name}.dlq" in longer.stdout
    assert _retention_ms(kafka_bootstrap, f"{unique_name}.dlq") == "172800000"

    conflict = runner.invoke(
        app,
        ["create-topic", unique_name, "--partitions", "5", "--bootstrap-servers", kafka_bootstrap],
    )
    assert conflict.exit_code == 1
    assert f"topic {unique_name} exists with 3 partitions, not 5" in conflict.stderr


def test_create_topic_custom_dlq_name(kafka_bootstrap: str, unique_name: str) -> None:
    outcomes = create_topics(
        kafka_bootstrap,
        unique_name,
        partitions=2,
        replication_factor=1,
        dlq_topic=f"{unique_name}-dead",
        dlq_partitions=1,
    )
    assert [(o.topic, o.action, o.partitions) for o in outcomes] == [
        (unique_name, "created", 2),
        (f"{unique_name}-dead", "created", 1),
    ]


def test_create_topic_bad_replication_is_clear(kafka_bootstrap: str, unique_name: str) -> None:
    result = runner.invoke(
        app,
        [
            "create-topic",
            unique_name,
            "--replication-factor",
            "3",
            "--bootstrap-servers",
            kafka_bootstrap,
        ],
    )
    assert result.exit_code == 1
    assert f"cannot create {unique_name}" in result.stderr
    assert "replication" in result.stderr.lower()


# -- redrive ------------------------------------------------------------------------------------


def _dead_letter(
    publisher: Publisher,
    dlq: str,
    key: str,
    error_type: ErrorType,
    count: int,
    timestamp_ms: int,
) -> bytes:
    value = orjson.dumps({"uri": f"https://img.example/{key}.jpg", "id": key})
    headers = dead_letter_headers(
        stage=Stage.FETCH,
        error_type=error_type,
        message=f"failed {key}",
        source_topic=dlq.removesuffix(".dlq"),
        source_partition=0,
        source_offset=7,
        redrive_count=count,
    )
    headers.append(("trace.id", key.encode()))
    publisher.send(dlq, key=key.encode(), value=value, headers=headers, timestamp_ms=timestamp_ms)
    return value


def test_redrive_with_filter_and_limit(kafka_bootstrap: str, unique_name: str) -> None:
    topic, dlq = unique_name, f"{unique_name}.dlq"
    create_topics(kafka_bootstrap, topic, partitions=2, replication_factor=1)
    stamp = int(time.time() * 1000) - 3_600_000  # an hour ago: kept, whatever the retention
    with Publisher(kafka_bootstrap) as publisher:
        values = {
            "nf-0": _dead_letter(publisher, dlq, "nf-0", ErrorType.NOT_FOUND, 0, stamp),
            "nf-2": _dead_letter(publisher, dlq, "nf-2", ErrorType.NOT_FOUND, 2, stamp + 1),
            "nf-3": _dead_letter(publisher, dlq, "nf-3", ErrorType.NOT_FOUND, 3, stamp + 2),
            "se-0": _dead_letter(publisher, dlq, "se-0", ErrorType.SERVER_ERROR, 0, stamp + 3),
        }
        assert publisher.wait(30).ok

    base = ["redrive", "--dlq-topic", dlq, "--topic", topic, "--bootstrap-servers", kafka_bootstrap]
    first = runner.invoke(
        app, [*base, "--where", "error.type=not_found", "--max-redrives", "3", "--until-end"]
    )
    assert first.exit_code == 0, first.output
    assert "redriven 2, skipped by filter 1, at the redrive limit 1, failed 0" in first.stderr
    assert "key=nf-3" in first.stderr and "reached --max-redrives 3" in first.stderr

    records = {r.key: r for r in read_all(kafka_bootstrap, topic)}
    assert set(records) == {b"nf-0", b"nf-2"}
    for key, count in ((b"nf-0", "1"), (b"nf-2", "3")):
        record = records[key]
        assert record.value == values[key.decode()]
        assert header_value(record.headers, "redrive.count") == count
        assert header_value(record.headers, "trace.id") == key.decode()
        assert header_value(record.headers, "error.type") is None
        assert header_value(record.headers, "source.offset") is None
    assert records[b"nf-0"].timestamp_ms == stamp  # the stale-write guard still sees it as old

    group = default_group(dlq, {"error.type": frozenset({"not_found"})})
    assert committed_offsets(kafka_bootstrap, group, dlq) == end_offsets(kafka_bootstrap, dlq)

    again = runner.invoke(app, [*base, "--where", "error.type=not_found", "--until-end"])
    assert again.exit_code == 0, again.output
    assert "redriven 0," in again.stderr
    assert len(read_all(kafka_bootstrap, topic)) == 2

    # another filter has its own group: the record the first one passed over is still there
    other = runner.invoke(app, [*base, "--where", "error.type=server_error", "--until-end"])
    assert other.exit_code == 0, other.output
    assert "redriven 1, skipped by filter 3" in other.stderr
    assert {r.key for r in read_all(kafka_bootstrap, topic)} == {b"nf-0", b"nf-2", b"se-0"}


def test_redrive_dry_run_sends_and_commits_nothing(kafka_bootstrap: str, unique_name: str) -> None:
    topic, dlq = unique_name, f"{unique_name}.dlq"
    create_topics(kafka_bootstrap, topic, partitions=1, replication_factor=1)
    with Publisher(kafka_bootstrap) as publisher:
        _dead_letter(publisher, dlq, "a", ErrorType.NOT_FOUND, 0, int(time.time() * 1000))
        assert publisher.wait(30).ok
    report = Redriver(
        kafka_bootstrap, RedriveOptions(dlq, topic, until_end=True, dry_run=True)
    ).run()
    assert report.redriven == 1
    assert end_offsets(kafka_bootstrap, topic) == {0: 0}
    assert committed_offsets(kafka_bootstrap, report.group, dlq) == {}


def test_redrive_empty_dlq_ends_at_once(kafka_bootstrap: str, unique_name: str) -> None:
    create_topics(kafka_bootstrap, unique_name, partitions=2, replication_factor=1)
    report = Redriver(
        kafka_bootstrap, RedriveOptions(f"{unique_name}.dlq", unique_name, until_end=True)
    ).run()
    assert (report.seen, report.total) == (0, 0)


def test_redrive_missing_dlq_is_clear(kafka_bootstrap: str, unique_name: str) -> None:
    result = runner.invoke(
        app,
        [
            "redrive",
            "--dlq-topic",
            f"{unique_name}.dlq",
            "--topic",
            unique_name,
            "--until-end",
            "--bootstrap-servers",
            kafka_bootstrap,
        ],
    )
    assert result.exit_code == 1
    assert f"dead-letter topic {unique_name}.dlq does not exist" in result.stderr


def test_redrive_follows_until_sigterm(kafka_bootstrap: str, unique_name: str) -> None:
    """Without --until-end the redrive follows the topic; SIGTERM ends it after a commit."""
    topic, dlq = unique_name, f"{unique_name}.dlq"
    create_topics(kafka_bootstrap, topic, partitions=1, replication_factor=1)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "producer", "redrive"),
            *("--dlq-topic", dlq, "--topic", topic, "--bootstrap-servers", kafka_bootstrap),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with Publisher(kafka_bootstrap) as publisher:
            _dead_letter(publisher, dlq, "late", ErrorType.SERVER_ERROR, 0, int(time.time() * 1000))
            assert publisher.wait(30).ok
        for _ in range(120):  # bounded: at most about a minute
            if end_offsets(kafka_bootstrap, topic).get(0):
                break
            time.sleep(0.5)
        assert end_offsets(kafka_bootstrap, topic) == {0: 1}
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "redriven 1," in err
    assert committed_offsets(kafka_bootstrap, default_group(dlq, {}), dlq) == {0: 1}
