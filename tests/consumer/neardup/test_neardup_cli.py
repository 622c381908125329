"""``consumer run --near-duplicate-threshold`` and ``consumer search --collapse-duplicates``
against the real Kafka, Triton and Milvus: photos, copies of them, a replay and a delete."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from PIL import Image

from tests.consumer.conftest import PHOTOS, photo_messages
from tests.support.kafka import create_topic, produce_json
from tests.support.milvus import rows_by_id

pytestmark = pytest.mark.integration

THRESHOLD = "0.92"


@dataclass
class Ingested:
    collection: str
    topic: str
    photos: Path
    env: dict[str, str]
    milvus: str
    kafka: str


def _run(ix: Ingested, group: str, *extra: str) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "consumer",
            "run",
            "--no-metrics",
            "--topic",
            ix.topic,
            "--group",
            group,
            "--collection",
            ix.collection,
            "--until-end",
            "--file-root",
            str(ix.photos),
            "--near-duplicate-threshold",
            THRESHOLD,
            *extra,
        ],
        env=ix.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.fixture(scope="module")
def ingested(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photo_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Ingested]:
    """The test photos, their flips and crops, plus three copies of each (the same file, a
    recompressed one, a half-size one), ingested with the check on: one partition, so each photo
    comes before its copies (file names sort that way)."""
    import secrets

    name = f"t_{secrets.token_hex(5)}"
    photos = tmp_path_factory.mktemp("neardup_photos")
    for path in photo_dir.iterdir():
        shutil.copy(path, photos / path.name)
    for photo in PHOTOS:
        image = Image.open(photos / f"{photo}.jpg")
        shutil.copy(photos / f"{photo}.jpg", photos / f"{photo}_copy.jpg")  # a re-upload
        image.save(photos / f"{photo}_jpeg.jpg", quality=50)
        image.resize((image.width // 2, image.height // 2)).save(photos / f"{photo}_half.jpg")
    create_topic(kafka_bootstrap, name, partitions=1)
    produce_json(kafka_bootstrap, name, photo_messages(photos))
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "MILVUS_URI": milvus_uri,
        "TRITON_URL": triton_grpc_url,
        "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("xdg")),
    }
    ix = Ingested(name, name, photos, env, milvus_uri, kafka_bootstrap)
    _run(ix, name)
    yield ix


def _flags(ix: Ingested) -> dict[str, tuple[str | None, float | None]]:
    rows = rows_by_id(ix.milvus, ix.collection, ["id", "near_duplicate_of", "near_duplicate_score"])
    return {k: (r["near_duplicate_of"], r["near_duplicate_score"]) for k, r in rows.items()}


def _search(ix: Ingested, image: str, *args: str) -> list[str]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "consumer",
            "search",
            "--collection",
            ix.collection,
            "--top-k",
            "4",
            str(ix.photos / image),
            *args,
        ],
        env=ix.env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [orjson.loads(line)["id"] for line in proc.stdout.splitlines() if line.strip()]


def _photo(id_: str) -> str:
    return id_.split("_", 1)[0]


def _check(flags: dict[str, tuple[str | None, float | None]]) -> None:
    """What holds whatever order the rows were written in (the first written is the original):
    every row is there; a photo and the same file under another id are never both originals,
    and when one is, the other is flagged against it at a score of 1; a flag names a row of the
    same photo, never another photo's; and it names an original (an unflagged row), never a
    copy."""
    assert len(flags) == len(PHOTOS) * 6  # photo, flip, crop and three copies: all written
    for photo in PHOTOS:
        first, second = flags[photo], flags[f"{photo}_copy"]
        assert first[0] or second[0], photo  # never both originals
        if first[0] is None or second[0] is None:  # the flagged one names the other, at 1
            of, score = first if first[0] else second
            assert of in (photo, f"{photo}_copy"), (photo, of)
            assert score == pytest.approx(1.0, abs=1e-4), (photo, score)
    for id_, (of, score) in flags.items():
        if of is None:
            assert score is None
            continue
        assert _photo(of) == _photo(id_), (id_, of)
        assert flags[of][0] is None, (id_, of)
        assert score is not None and float(THRESHOLD) <= score <= 1.0


def test_copies_are_flagged_against_their_photo_and_nothing_is_dropped(ix_flags: dict) -> None:
    _check(ix_flags)


@pytest.fixture(scope="module")
def ix_flags(ingested: Ingested) -> dict[str, tuple[str | None, float | None]]:
    return _flags(ingested)


def test_collapse_duplicates_hides_the_flagged_rows(ingested: Ingested, ix_flags: dict) -> None:
    plain = _search(ingested, "astronaut.jpg")
    collapsed = _search(ingested, "astronaut.jpg", "--collapse-duplicates")
    assert plain[0] in ("astronaut", "astronaut_copy")  # the same file: a score of 1 each
    assert any(ix_flags[id_][0] for id_ in plain), plain  # the copies are among the nearest
    assert len(collapsed) == 4  # still top-k rows: more were asked for
    assert not any(ix_flags[id_][0] for id_ in collapsed), collapsed


def test_a_replay_leaves_the_flags_as_they_were(ingested: Ingested, ix_flags: dict) -> None:
    """The documented replay behaviour: a replay (new group, --from earliest) skips rows already
    stored at their version, so the flags stay exactly as they were; one with
    --rewrite-same-version checks every row again against the stored originals (never against
    copies), so an original is not flagged against its own copy."""
    _run(ingested, f"{ingested.topic}-replay", "--from", "earliest")
    assert _flags(ingested) == ix_flags
    _run(ingested, f"{ingested.topic}-rewrite", "--from", "earliest", "--rewrite-same-version")
    again = _flags(ingested)
    _check(again)  # decided again, as of the replay: the same rules hold


def test_a_copy_shows_again_once_its_photo_is_deleted(ingested: Ingested) -> None:
    """The flag stays as of ingestion (it names a deleted id); a collapsed search hides a copy
    only while the row it names is stored."""
    now = _flags(ingested)  # as the earlier tests left them
    copy, (original, _) = next((k, v) for k, v in sorted(now.items()) if v[0])
    assert copy not in _search(ingested, f"{original}.jpg", "--collapse-duplicates")
    produce_json(ingested.kafka, ingested.topic, [{"id": original, "op": "delete"}])
    _run(ingested, f"{ingested.topic}-delete")
    flags = _flags(ingested)
    assert original not in flags
    assert flags[copy][0] == original
    assert copy in _search(ingested, f"{original}.jpg", "--collapse-duplicates")
