"""The s3 settings: flags, environment, validation, the fetch policy they make, the start-up log."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from consumer.cli import app
from consumer.engine.wiring import fetch_policy
from consumer.settings import Settings


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``consumer run`` points the root logger at CliRunner's stream, closed after the call."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_defaults_allow_s3_and_every_bucket() -> None:
    s = Settings()
    assert "s3" in s.allowed_schemes
    assert s.allowed_buckets == ()
    assert (s.s3_endpoint_url, s.s3_region, s.s3_path_style, s.s3_requester_pays) == (
        None,
        None,
        False,
        False,
    )


def test_environment_settings_reach_the_fetch_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGE_EMBEDDER_S3_ENDPOINT_URL", "https://minio.example:9000")
    monkeypatch.setenv("IMAGE_EMBEDDER_S3_REGION", "eu-west-1")
    monkeypatch.setenv("IMAGE_EMBEDDER_S3_PATH_STYLE", "true")
    monkeypatch.setenv("IMAGE_EMBEDDER_S3_REQUESTER_PAYS", "1")
    monkeypatch.setenv("IMAGE_EMBEDDER_ALLOWED_BUCKETS", '["photos","photos.archive"]')
    policy = fetch_policy(Settings(io_threads=32))
    assert policy.s3_endpoint_url == "https://minio.example:9000"
    assert policy.s3_region == "eu-west-1"
    assert policy.s3_path_style and policy.s3_requester_pays
    assert policy.allowed_buckets == ("photos", "photos.archive")
    assert policy.s3_max_pool_connections == 32  # one pooled connection per I/O thread
    assert "s3" in policy.allowed_schemes


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("allowed_buckets", ("Photos",), "is not a valid S3 bucket name"),
        ("allowed_buckets", ("ab",), "is not a valid S3 bucket name"),
        ("s3_endpoint_url", "minio:9000", "must look like https://host[:port]"),
        ("s3_endpoint_url", "https://key:secret@minio:9000", "may not carry credentials"),
    ],
)
def test_bad_values_are_refused_with_a_reason(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Settings(**{field: value})


def test_cli_flags_build_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """``consumer run`` flags map onto the settings (checked up to the point of connecting)."""
    seen: dict[str, Settings] = {}

    class _Stop(Exception):
        pass

    def capture(s: Settings) -> None:
        seen["s"] = s
        raise _Stop

    monkeypatch.setattr("consumer.cli._configure_logging", capture)
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--topic",
            "t",
            "--s3-endpoint-url",
            "http://127.0.0.1:9000",
            "--s3-region",
            "us-east-2",
            "--s3-path-style",
            "--s3-requester-pays",
            "--allowed-bucket",
            "photos",
            "--allowed-bucket",
            "raw-uploads",
        ],
    )
    assert isinstance(result.exception, _Stop), result.output
    s = seen["s"]
    assert s.s3_endpoint_url == "http://127.0.0.1:9000" and s.s3_region == "us-east-2"
    assert s.s3_path_style and s.s3_requester_pays
    assert s.allowed_buckets == ("photos", "raw-uploads")


def test_cli_refuses_a_bad_bucket_in_one_line() -> None:
    result = CliRunner().invoke(app, ["run", "--topic", "t", "--allowed-bucket", "Bad_Bucket"])
    assert result.exit_code == 2
    assert "is not a valid S3 bucket name" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "s3:// URIs may name every bucket the credentials can read"),
        (["--allowed-bucket", "photos"], "s3:// URIs limited to the allowed buckets"),
    ],
)
def test_start_up_log_says_which_buckets_are_allowed(
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    args: list[str],
    expected: str,
) -> None:
    import consumer.engine

    class _Stop(Exception):
        pass

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise _Stop

    monkeypatch.setattr(consumer.engine, "Engine", refuse)
    result = CliRunner().invoke(
        app, ["run", "--topic", "t", "--no-metrics", "--log-format", "json", *args]
    )
    assert isinstance(result.exception, _Stop), result.output
    logged = capfd.readouterr().err + result.output
    assert expected in logged


def test_check_reports_credentials_and_allowed_buckets(
    s3_world, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consumer.query import s3_check

    name, passed, detail = s3_check(
        Settings(s3_endpoint_url=s3_world.endpoint, allowed_buckets=("photos", "no-such-bucket"))
    )
    assert name == "s3" and not passed
    assert "credentials from env" in detail and "photos ok" in detail
    assert "no-such-bucket: 404" in detail
    assert s3_check(Settings(s3_endpoint_url=s3_world.endpoint))[1]
    assert s3_check(Settings(allowed_schemes=("https",))) is None
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    name, passed, detail = s3_check(Settings(allowed_buckets=("photos",)))
    assert not passed and "no AWS credentials found" in detail
    assert s3_check(Settings())[1]  # s3 unused: not a failure
