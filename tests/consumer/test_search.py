"""``consumer search``: many images in one call, filters, output fields, the contact sheet and
the errors a user can cause, against the real Kafka, Triton and Milvus servers."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
from PIL import Image

from consumer import contactsheet
from consumer.inference import InferenceUnavailableError
from consumer.query import (
    Query,
    QueryError,
    Searcher,
    _bucket_for,
    clip_score,
    default_cache_dir,
    one_line,
    with_stable_cache,
)
from consumer.settings import Settings
from tests.consumer.conftest import photo_messages
from tests.support.kafka import create_topic, produce_json


# --- logic (no servers) -----------------------------------------------------------------------
def test_scores_are_clipped_to_the_cosine_range() -> None:
    assert clip_score(1.0000004) == 1.0
    assert clip_score(-1.2) == -1.0
    assert clip_score(0.25) == 0.25


def test_one_compiled_shape_holds_every_query_or_is_the_largest() -> None:
    assert _bucket_for(1, (1, 2, 4)) == 1
    assert _bucket_for(3, (4, 1, 2)) == 4
    assert _bucket_for(50, (1, 2, 4)) == 4


def test_compilation_cache_is_the_users_unless_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("IMAGE_EMBEDDER_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_cache_dir() == tmp_path / "xdg" / "image-embedder" / "jax"
    assert with_stable_cache(Settings()).compilation_cache_dir == default_cache_dir()
    mine = tmp_path / "mine"
    chosen = with_stable_cache(Settings(compilation_cache_dir=mine))
    assert chosen.compilation_cache_dir == mine
    monkeypatch.setenv("IMAGE_EMBEDDER_COMPILATION_CACHE_DIR", str(mine / "env"))
    assert with_stable_cache(Settings()).compilation_cache_dir == mine / "env"


def test_library_messages_become_one_line() -> None:
    assert one_line("a\n  b\tc\n") == "a b c"
    assert len(one_line("x" * 1000, limit=50)) == 50


def test_contact_sheet_has_one_row_per_query_and_placeholders() -> None:
    photo = np.full((300, 200, 3), 200, np.uint8)
    rows = [
        [contactsheet.Tile(photo, ["query", "a.jpg"], is_query=True)]
        + [contactsheet.Tile(photo, [f"#{r} score 0.9", f"id{r}"]) for r in (1, 2)],
        [
            contactsheet.Tile(photo, ["query", "b.jpg"], is_query=True),
            contactsheet.Tile(None, ["#1 score 0.5", "gone"], reason="not fetched: 404"),
        ],
    ]
    sheet = contactsheet.render(rows)
    assert sheet.size == contactsheet.sheet_size(2, 3)
    cell = _cell(np.asarray(sheet), 1, 1)
    assert (cell == contactsheet.PLACEHOLDER).all(axis=-1).mean() > 0.5


class _FakeTriton:
    """Records each request; the vector of an image is its first pixel, then ones."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.requests: list[list[float]] = []
        self.fail_at = fail_at
        self.closed = False

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if len(self.requests) == self.fail_at:
            raise InferenceUnavailableError("model went away")
        self.requests.append([float(x) for x in batch[:, 0, 0, 0]])
        return np.concatenate([batch[:, 0, 0, :1], np.ones((len(batch), 3), np.float32)], axis=1)

    def close(self) -> None:
        self.closed = True


def _streamed(
    monkeypatch: pytest.MonkeyPatch, count: int, chunk: int, *, fail_at: int | None = None
) -> tuple[Searcher, list[Query], _FakeTriton]:
    """A searcher fed ``count`` queries preprocessed ``chunk`` at a time, requests of 3."""
    searcher = Searcher(Settings(infer_batch_size=3))
    queries = [Query(f"q{i}", pixels=np.zeros((1, 1, 3), np.uint8)) for i in range(count)]
    triton = _FakeTriton(fail_at)

    def preprocessed(todo: list[Query]) -> Iterator[np.ndarray]:
        for start in range(0, len(todo), chunk):
            n = len(todo[start : start + chunk])
            yield np.arange(start + 1, start + n + 1, dtype=np.float32)[:, None, None, None] * (
                np.ones((n, 2, 2, 3), np.float32)
            )

    monkeypatch.setattr(searcher, "_preprocessed", preprocessed)
    monkeypatch.setattr(searcher, "_triton", lambda: triton)
    return searcher, queries, triton


def test_streamed_inference_sends_requests_of_the_batch_size_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    searcher, queries, triton = _streamed(monkeypatch, 7, 2)
    searcher.spec = SimpleNamespace(max_batch_size=0)  # the model is known: no wait
    searcher.preprocess_and_infer(queries)
    searcher.wait_inference()
    assert triton.requests == [[1, 2, 3], [4, 5, 6], [7]] and triton.closed
    for i, query in enumerate(queries, start=1):
        assert query.vector is not None and query.vector[0] == pytest.approx(i / (i * i + 3) ** 0.5)


def test_streamed_inference_waits_for_the_model_and_reports_its_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    searcher, queries, triton = _streamed(monkeypatch, 5, 4, fail_at=1)
    searcher.preprocess_and_infer(queries)  # all preprocessed before the model is read
    assert triton.requests == []
    searcher.spec = SimpleNamespace(max_batch_size=2)  # min(infer_batch_size, the model's)
    searcher._model_read.set()
    with pytest.raises(QueryError, match="inference failed: model went away"):
        searcher.wait_inference()
    assert triton.requests == [[1, 2]] and triton.closed
    unread, queries, idle = _streamed(monkeypatch, 2, 1)
    unread._model_read.set()  # the model could not be read: the thread ends, wait() says why
    unread.preprocess_and_infer(queries)
    unread.wait_inference()
    assert idle.requests == [] and all(q.vector is None for q in queries)


_MARKED_EXIT = """
import atexit, sys
atexit.register(lambda: sys.stderr.write("teardown ran\\n"))
from consumer.cli import main
sys.argv = ["consumer", *sys.argv[1:]]
main()
"""


def test_a_search_ends_without_the_interpreters_teardown(tmp_path: Path) -> None:
    """Finalizing JAX, pymilvus and gRPC at exit costs about half a second: a search ends
    once its output is flushed, with its exit status; other commands exit as usual."""
    missing = str(tmp_path / "none.jpg")
    proc = subprocess.run(
        [sys.executable, "-c", _MARKED_EXIT, "search", "--collection", "c", missing],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"error: cannot read {missing}: No such file or directory"]
    usage = subprocess.run(
        [sys.executable, "-c", _MARKED_EXIT, "search", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert usage.returncode == 0 and "--contact-sheet" in usage.stdout
    assert usage.stderr == "teardown ran\n"


# --- against the servers ----------------------------------------------------------------------


@dataclass
class Indexed:
    collection: str
    photos: Path
    env: dict[str, str]
    gone: str  # the id of a row whose image was deleted after ingestion


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def indexed(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photo_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Indexed]:
    """The test photos ingested with metadata, plus a copy of one whose file is then deleted."""
    name = f"t_{secrets.token_hex(5)}"
    photos = tmp_path_factory.mktemp("search_photos")
    for path in photo_dir.iterdir():
        shutil.copy(path, photos / path.name)
    shutil.copy(photos / "rocket.jpg", photos / "rocket_copy.jpg")
    messages = []
    for message in photo_messages(photos):
        subject, _, variant = message["id"].partition("_")
        messages.append({**message, "metadata": {"subject": subject, "variant": variant or "orig"}})
    create_topic(kafka_bootstrap, name, partitions=1)
    produce_json(kafka_bootstrap, name, messages)
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "MILVUS_URI": milvus_uri,
        "TRITON_URL": triton_grpc_url,
        "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("xdg")),
    }
    env.pop("IMAGE_EMBEDDER_COMPILATION_CACHE_DIR", None)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "consumer",
            "run",
            "--no-metrics",
            "--topic",
            name,
            "--group",
            name,
            "--collection",
            name,
            "--until-end",
            "--file-root",
            str(photos),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (photos / "rocket_copy.jpg").unlink()
    yield Indexed(name, photos, env, "rocket_copy")


def _search(ix: Indexed, *args: str, env: dict[str, str] | None = None):
    proc = subprocess.run(
        [sys.executable, "-m", "consumer", "search", "--collection", ix.collection, *args],
        env={**ix.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def _lines(stdout: str) -> list[dict]:
    return [orjson.loads(line) for line in stdout.splitlines() if line.strip()]


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.integration
def test_several_images_in_one_call_each_finds_itself(indexed: Indexed) -> None:
    queries = [indexed.photos / f"{n}.jpg" for n in ("astronaut", "chelsea_crop", "coffee_flip")]
    proc = _search(indexed, "--top-k", "3", *map(str, queries))
    assert proc.returncode == 0, proc.stderr
    lines = _lines(proc.stdout)
    assert len(lines) == 9
    for query in queries:
        mine = [line for line in lines if line["query"] == str(query)]
        assert [line["rank"] for line in mine] == [1, 2, 3]
        assert mine[0]["id"] == query.stem
        assert mine[0]["score"] > 0.99
        assert all(-1.0 <= line["score"] <= 1.0 for line in mine)
        assert mine == sorted(mine, key=lambda line: -line["score"])
        assert set(mine[0]) == {"query", "rank", "id", "score", "uri", "metadata"}


@pytest.mark.integration
def test_filter_over_metadata_and_output_fields(indexed: Indexed) -> None:
    query = str(indexed.photos / "chelsea.jpg")
    proc = _search(
        indexed,
        "--top-k",
        "20",
        "--filter",
        'metadata["variant"] == "flip" and ingested_at > 0',
        "--output-fields",
        "metadata,ingested_at,kafka_offset",
        query,
    )
    assert proc.returncode == 0, proc.stderr
    lines = _lines(proc.stdout)
    flips = [m for m in photo_messages(indexed.photos) if m["id"].endswith("_flip")]
    assert sorted(line["id"] for line in lines) == sorted(m["id"] for m in flips)
    assert lines[0]["id"] == "chelsea_flip"
    for line in lines:
        assert set(line) == {
            "query",
            "rank",
            "id",
            "score",
            "metadata",
            "ingested_at",
            "kafka_offset",
        }
        assert line["metadata"]["variant"] == "flip" and line["ingested_at"] > 0


@pytest.mark.integration
@pytest.mark.parametrize(
    ("expr", "said"),
    [
        ('metadata["variant"] ==', "invalid --filter"),
        ("no_such_field > 3", "no_such_field"),
        ("uri like", "invalid --filter"),
    ],
)
def test_bad_filter_is_one_clear_line(indexed: Indexed, expr: str, said: str) -> None:
    proc = _search(indexed, "--filter", expr, str(indexed.photos / "coins.jpg"))
    assert proc.returncode == 1
    line = _one_error_line(proc)
    assert said in line and "invalid --filter" in line and proc.stdout == ""


@pytest.mark.integration
def test_unknown_output_field_names_the_stored_ones(indexed: Indexed) -> None:
    proc = _search(indexed, "--output-fields", "uri,colour", str(indexed.photos / "coins.jpg"))
    assert proc.returncode == 1
    line = _one_error_line(proc)
    assert "colour" in line and "ingested_at" in line and "embedding" not in line


@pytest.mark.integration
def test_contact_sheet_one_row_per_query_with_a_placeholder(
    indexed: Indexed, tmp_path: Path
) -> None:
    sheet_path = tmp_path / "out" / "sheet.png"
    queries = [str(indexed.photos / "rocket.jpg"), str(indexed.photos / "coffee.jpg")]
    proc = _search(
        indexed,
        "--top-k",
        "4",
        "--contact-sheet",
        str(sheet_path),
        "--output-fields",
        "metadata",
        "--file-root",
        str(indexed.photos),
        *queries,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 neighbour(s) could not be fetched" in proc.stderr
    lines = _lines(proc.stdout)
    assert "uri" not in lines[0]  # the sheet needs the uri; the output says only what was asked
    with Image.open(sheet_path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels.shape[1], pixels.shape[0]) == contactsheet.sheet_size(2, 5)
    rocket = [line for line in lines if line["query"] == queries[0]]
    gone_rank = next(line["rank"] for line in rocket if line["id"] == indexed.gone)
    for row in range(2):
        query_cell = _cell(pixels, row, 0)
        assert query_cell.std() > 10  # a photo, not an empty cell
    assert (_cell(pixels, 0, gone_rank) == contactsheet.PLACEHOLDER).all(axis=-1).mean() > 0.5
    for rank in range(1, 5):
        if rank != gone_rank:
            assert (_cell(pixels, 0, rank) == contactsheet.PLACEHOLDER).all(axis=-1).mean() < 0.5
    # the two rows differ: each shows its own query
    assert np.abs(_cell(pixels, 0, 0).astype(int) - _cell(pixels, 1, 0)).mean() > 10


@pytest.mark.integration
def test_neighbours_outside_the_file_roots_are_placeholders(
    indexed: Indexed, tmp_path: Path
) -> None:
    sheet_path = tmp_path / "sheet.png"
    proc = _search(
        indexed,
        "--top-k",
        "2",
        "--contact-sheet",
        str(sheet_path),
        str(indexed.photos / "coins.jpg"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 neighbour(s) could not be fetched" in proc.stderr
    pixels = np.asarray(Image.open(sheet_path).convert("RGB"))
    assert (pixels.shape[1], pixels.shape[0]) == contactsheet.sheet_size(1, 3)
    assert (_cell(pixels, 0, 1) == contactsheet.PLACEHOLDER).all(axis=-1).mean() > 0.5


@pytest.mark.integration
def test_errors_a_user_can_cause_are_one_line_without_traceback(indexed: Indexed) -> None:
    image = str(indexed.photos / "coins.jpg")
    missing = _search(indexed, image, "--collection", "nope")
    assert missing.returncode == 1
    assert "collection 'nope' does not exist" in _one_error_line(missing)
    mismatch = _search(indexed, "--output", "LOGITS", image)
    assert mismatch.returncode == 1 and "another model" in _one_error_line(mismatch)
    no_model = _search(indexed, "--model", "no_such_model", image)
    assert no_model.returncode == 1 and "--model" in _one_error_line(no_model)
    closed = f"127.0.0.1:{_free_port()}"
    no_milvus = _search(
        indexed,
        image,
        env={"MILVUS_URI": f"http://{closed}", "IMAGE_EMBEDDER_MILVUS_TIMEOUT_S": "3"},
    )
    assert no_milvus.returncode == 1
    assert "Milvus" in (line := _one_error_line(no_milvus)) and "--milvus-uri" in line
    no_triton = _search(indexed, image, env={"TRITON_URL": f"grpc://{closed}"})
    assert no_triton.returncode == 1
    assert "Triton" in (line := _one_error_line(no_triton)) and "--triton-url" in line
    unreadable = _search(indexed, str(indexed.photos / "none.jpg"))
    assert unreadable.returncode == 1 and "cannot read" in _one_error_line(unreadable)
    usage = subprocess.run(
        [sys.executable, "-m", "consumer", "search", image],
        env={k: v for k, v in indexed.env.items() if k != "IMAGE_EMBEDDER_COLLECTION"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert usage.returncode == 2 and "--collection" in usage.stderr
    bad_sheet = _search(indexed, "--contact-sheet", "sheet.jpg", image)
    assert bad_sheet.returncode == 2 and ".png" in _one_error_line(bad_sheet)


@pytest.mark.integration
def test_debug_log_level_still_shows_the_library_messages(indexed: Indexed) -> None:
    env: dict[str, str] = {}
    quiet = subprocess.run(
        [
            sys.executable,
            "-m",
            "consumer",
            "search",
            "--collection",
            "nope",
            str(indexed.photos / "coins.jpg"),
        ],
        env={**indexed.env, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    loud = subprocess.run(
        [
            sys.executable,
            "-m",
            "consumer",
            "search",
            "--collection",
            "nope",
            "--log-level",
            "DEBUG",
            str(indexed.photos / "coins.jpg"),
        ],
        env={**indexed.env, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert quiet.returncode == loud.returncode == 1
    assert len(quiet.stderr.splitlines()) == 1 and "Traceback" not in quiet.stderr
    assert "Traceback" in loud.stderr and "does not exist" in loud.stderr


def _cell(pixels: np.ndarray, row: int, column: int) -> np.ndarray:
    """The thumbnail square of one tile of a contact sheet."""
    thumb, gap = contactsheet.THUMB_PX, contactsheet.GAP_PX
    top = gap + row * (thumb + contactsheet.LABEL_LINES * contactsheet.LINE_PX + gap)
    left = gap + column * (thumb + gap)
    return pixels[top : top + thumb, left : left + thumb]


@pytest.mark.integration
def test_an_unreadable_image_is_reported_and_the_others_are_searched(indexed: Indexed) -> None:
    good = str(indexed.photos / "camera.jpg")
    proc = _search(indexed, "--top-k", "1", str(indexed.photos / "missing.jpg"), good)
    assert proc.returncode == 1
    assert "missing.jpg" in _one_error_line(proc)
    lines = _lines(proc.stdout)
    assert [(line["query"], line["id"]) for line in lines] == [(good, "camera")]
