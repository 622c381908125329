"""The s3:// library comparison runs, and checks what it reads (the peers are not installed in
the test environment: only the consumer's own fetcher is measured here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import s3_libraries


@pytest.mark.slow
def test_the_fetcher_reads_every_object_back_and_reports_its_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s3-libraries.json"
    s3_libraries.main(
        ["--library", "botocore", "--objects", "6", "--threads", "2", "--json", str(out)]
    )
    [row] = json.loads(out.read_text())
    assert row["library"] == "botocore" and row["objects"] == 6
    assert row["wrong_bodies"] == 0
    assert row["objects_per_s"] > 0 and row["cpu_ms_per_object"] > 0
    assert "botocore" in capsys.readouterr().out


def test_a_peer_that_is_not_installed_is_reported_not_hidden(tmp_path: Path) -> None:
    """Without the peers' folder the child fails to import obstore: the row says so."""
    row = s3_libraries._measure_in_child(
        type("Args", (), {"peers": None, "threads": 1, "objects": 1})(),
        "obstore",
        type(
            "Server", (), {"endpoint": "http://127.0.0.1:9", "root_user": "u", "root_password": "p"}
        )(),
    )
    assert row["library"] == "obstore" and "obstore" in row["error"]
