"""``consumer run --auth-failure-timeout-s``: the flag reaches the setting; a bad value is one
clear line and exit 2."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

import consumer.engine
from consumer.cli import EXIT_CONFIG, app
from consumer.engine import EngineFatalError
from consumer.settings import Settings


def test_the_flag_sets_the_auth_failure_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Settings] = []

    class Stub:
        def __init__(self, s: Settings, **_kwargs: Any) -> None:
            seen.append(s)
            raise EngineFatalError("stub engine: not run")

    monkeypatch.setattr(consumer.engine, "Engine", Stub)
    result = CliRunner().invoke(
        app, ["run", "--topic", "t", "--no-metrics", "--auth-failure-timeout-s", "7.5"]
    )
    assert result.exit_code == EXIT_CONFIG, result.output
    assert [s.auth_failure_timeout_s for s in seen] == [7.5]


def test_a_timeout_that_is_not_positive_is_refused_in_one_line() -> None:
    result = CliRunner().invoke(app, ["run", "--topic", "t", "--auth-failure-timeout-s", "0"])
    assert result.exit_code == EXIT_CONFIG
    assert "auth_failure_timeout_s" in result.output
    assert "Traceback" not in result.output
