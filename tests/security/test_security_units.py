"""Units of consumer.security: causes of librdkafka errors, the run-time auth-failure watch,
secrets from files, refused secret flags and the oauth_cb hook."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from consumer.security import (
    AuthFailureWatch,
    SecretFileSource,
    classify,
    explain,
    load_oauth_cb,
    refuse_secret_flags,
)
from consumer.settings import Settings

AUTH = KafkaError(
    -169,
    "sasl_ssl://127.0.0.1:9094/bootstrap: SASL authentication error: Authentication failed "
    "during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after "
    "308ms in state AUTH_REQ)",
)
TLS = KafkaError(-181, "ssl://127.0.0.1:9094/1: SSL handshake failed: certificate verify failed")
CLIENT_CERT = KafkaError(
    -195,
    "ssl://127.0.0.1:9096/bootstrap: Receive failed: error:0A000412:SSL routines::ssl/tls alert "
    "bad certificate: SSL alert number 42",
)
DOWN = KafkaError(-195, "127.0.0.1:9092/1: Connect to ipv4#127.0.0.1:9092 failed: refused")


def test_classify() -> None:
    assert classify(AUTH).cause == "authentication"  # type: ignore[union-attr]
    assert classify(TLS).cause == "tls"  # type: ignore[union-attr]
    assert classify(CLIENT_CERT).cause == "client-certificate"  # type: ignore[union-attr]
    acl = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "Topic authorization failed")
    assert classify(acl).cause == "authorization"  # type: ignore[union-attr]
    assert classify(DOWN) is None
    assert classify(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")) is None


def test_explain_authentication_names_user_mechanism_never_password() -> None:
    conf = {"sasl.username": "embedder", "sasl.mechanism": "SCRAM-SHA-512", "sasl.password": "pw1"}
    line = explain(classify(AUTH), conf)  # type: ignore[arg-type]
    assert line.startswith("Kafka authentication failed at 127.0.0.1:9094: user 'embedder'")
    assert "SCRAM-SHA-512" in line and "invalid credentials" in line
    assert "pw1" not in line and "\n" not in line


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_auth_failure_watch_is_fatal_after_the_timeout_only() -> None:
    clock = Clock()
    retries: list[tuple[str, str]] = []
    watch = AuthFailureWatch(
        30,
        clock,
        on_retry=lambda cause, line: retries.append((cause, line)),
        conf={"sasl.username": "embedder", "sasl.mechanism": "PLAIN"},
    )
    assert watch.observe(DOWN) is None and watch.fatal() is None
    watch.observe(AUTH)
    assert watch.fatal() is None
    clock.now += 29
    watch.observe(AUTH)
    assert watch.fatal() is None
    clock.now += 1
    line = watch.fatal()
    assert line is not None and "Kafka authentication failed" in line and "30 s" in line
    assert [cause for cause, _ in retries] == ["authentication", "authentication"]
    assert all("'embedder'" in text for _, text in retries)


def test_auth_failure_watch_recovers() -> None:
    clock = Clock()
    watch = AuthFailureWatch(10, clock)
    watch.observe(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED, "Group authorization failed"))
    clock.now += 5
    watch.ok()  # e.g. the ACL was granted again: a commit went through
    clock.now += 20
    assert watch.fatal() is None and watch.failing_since is None
    watch.observe(CLIENT_CERT)
    clock.now += 10
    assert "refused the client certificate" in (watch.fatal() or "")


def test_auth_failure_watch_needs_a_positive_timeout() -> None:
    with pytest.raises(ValueError, match="positive"):
        AuthFailureWatch(0)


def test_password_from_a_file_and_the_secrets_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "password"
    secret.write_text("hunter2\n")
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "IMAGE_EMBEDDER_MILVUS_TOKEN").write_text("root:tok")
    (folder / "kafka_ssl_key_password").write_text("keypw")
    monkeypatch.setenv("IMAGE_EMBEDDER_KAFKA_SASL_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("IMAGE_EMBEDDER_SECRETS_DIR", str(folder))
    s = Settings(topic="t")
    conf = s.kafka_common()
    assert conf["sasl.password"] == "hunter2"  # the final newline dropped
    assert conf["ssl.key.password"] == "keypw"
    assert s.milvus_token is not None and s.milvus_token.get_secret_value() == "root:tok"
    shown = repr(s) + str(s.redacted())
    assert "hunter2" not in shown and "root:tok" not in shown and "keypw" not in shown


def test_flags_win_over_files_and_the_environment_over_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "kafka_sasl_username").write_text("from-folder")
    monkeypatch.setenv("IMAGE_EMBEDDER_SECRETS_DIR", str(folder))
    assert Settings().kafka_sasl_username == "from-folder"
    assert Settings(kafka_sasl_username="flag").kafka_sasl_username == "flag"
    monkeypatch.setenv("IMAGE_EMBEDDER_KAFKA_SASL_USERNAME", "from-env")
    assert Settings().kafka_sasl_username == "from-env"


def test_both_a_value_and_its_file_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGE_EMBEDDER_KAFKA_SASL_PASSWORD", "x")
    monkeypatch.setenv("IMAGE_EMBEDDER_KAFKA_SASL_PASSWORD_FILE", "/nonexistent")
    with pytest.raises(ValueError, match="not both"):
        SecretFileSource(Settings)()


def test_an_unreadable_secret_file_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGE_EMBEDDER_KAFKA_SASL_PASSWORD_FILE", "/nonexistent/pw")
    with pytest.raises(ValueError) as info:
        Settings()
    assert str(info.value) == (
        "IMAGE_EMBEDDER_KAFKA_SASL_PASSWORD_FILE: cannot read /nonexistent/pw: "
        "No such file or directory"
    )


@pytest.mark.parametrize(
    "name",
    ["sasl.password", "ssl.key.password", "sasl.oauthbearer.client.secret", "sasl.jaas.config"],
)
def test_secret_flags_are_refused_without_echoing_them(name: str) -> None:
    with pytest.raises(ValueError, match="not accepted as command-line flags") as info:
        refuse_secret_flags({name: "s3cret"})
    assert "s3cret" not in str(info.value)
    with pytest.raises(ValueError) as info:
        Settings(kafka_config=[f"{name}=s3cret"])  # the command line's form
    assert "s3cret" not in str(info.value)
    refuse_secret_flags({"linger.ms": "5", "ssl.ca.location": "/ca.pem"})


def test_oauth_cb_hook_is_called_by_librdkafka() -> None:
    """``kafka_oauth_cb`` names a function; librdkafka calls it for a token (as MSK IAM's
    signer does), with ``sasl.oauthbearer.config``."""
    from confluent_kafka import Producer

    from tests.security import oauth_provider

    oauth_provider.CALLS.clear()
    s = Settings(
        bootstrap_servers="127.0.0.1:1",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="OAUTHBEARER",
        kafka_oauth_cb="tests.security.oauth_provider:token",
        kafka_config={"sasl.oauthbearer.config": "region=eu-west-1"},
    )
    conf = s.kafka_common()
    assert conf["oauth_cb"] is oauth_provider.token
    producer = Producer(conf)
    producer.poll(1)
    assert oauth_provider.CALLS == ["region=eu-west-1"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "must look like"),
        ("no_such_module_x:f", "cannot import"),
        ("tests.security.oauth_provider:missing", "has no missing"),
        ("tests.security.oauth_provider:CALLS", "not callable"),
    ],
)
def test_a_bad_oauth_cb_is_a_clear_error(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_oauth_cb(spec)


def test_kafka_credentials_from_a_config_file_and_a_password_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The --config file holds the connection settings; the password stays in its own file
    (files beat the config file), and hostname verification is left at librdkafka's default."""
    config = tmp_path / "consumer.toml"
    config.write_text(
        'kafka_security_protocol = "SASL_SSL"\n'
        'kafka_sasl_mechanism = "SCRAM-SHA-512"\n'
        'kafka_sasl_username = "embedder"\n'
        'kafka_sasl_password = "from-config"\n'
        'kafka_ssl_ca_location = "/etc/ca.pem"\n'
    )
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    s = Settings(config_file=config)
    assert s.kafka_common()["sasl.password"] == "from-config"
    monkeypatch.setenv("IMAGE_EMBEDDER_KAFKA_SASL_PASSWORD_FILE", str(secret))
    conf = Settings(config_file=config).kafka_common()
    assert conf["sasl.password"] == "from-file"
    assert conf["security.protocol"] == "SASL_SSL" and conf["ssl.ca.location"] == "/etc/ca.pem"
    assert "ssl.endpoint.identification.algorithm" not in conf  # librdkafka's default: https
