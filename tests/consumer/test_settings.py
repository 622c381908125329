"""Settings precedence (flags > env > file > defaults) and secret handling."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from consumer.settings import Settings, parse_start


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "settings.toml"
    config.write_text('topic = "from-file"\ngroup = "file-group"\nbatch_size = 7\n')
    monkeypatch.setenv("IMAGE_EMBEDDER_GROUP", "env-group")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker:1234")
    s = Settings(config_file=config, topic="from-flag")
    assert s.topic == "from-flag"  # flag beats file
    assert s.group == "env-group"  # env beats file
    assert s.batch_size == 7  # file beats default
    assert s.bootstrap_servers == "broker:1234"
    assert s.triton_url == "grpc://127.0.0.1:8001"  # default


def test_settings_are_frozen() -> None:
    s = Settings(topic="t")
    with pytest.raises(ValidationError):
        s.topic = "other"  # type: ignore[misc]


def test_secrets_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGE_EMBEDDER_MILVUS_TOKEN", "root:s3cret-token")
    monkeypatch.setenv("IMAGE_EMBEDDER_KAFKA_SASL_PASSWORD", "hunter2")
    s = Settings(kafka_config={"sasl.oauthbearer.client.secret": "abc123", "linger.ms": "5"})
    text = repr(s) + str(s.redacted())
    for secret in ("s3cret-token", "hunter2", "abc123"):
        assert secret not in text
    assert s.kafka_common()["sasl.password"] == "hunter2"
    assert s.kafka_common()["linger.ms"] == "5"


def test_triton_url_forms() -> None:
    assert Settings(triton_url="http://h:8000").triton_protocol == "http"
    assert Settings(triton_url="grpc://h:8001").triton_address == "h:8001"
    with pytest.raises(ValidationError):
        Settings(triton_url="ftp://h:1")


def test_parse_start() -> None:
    assert parse_start("earliest") == "earliest"
    assert parse_start("0:5,2:7") == {0: 5, 2: 7}
    assert parse_start("2026-01-02T03:04:05Z").year == 2026
    with pytest.raises(ValueError):
        parse_start("yesterday")
