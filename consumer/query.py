"""Operator commands that do not run the loop: search by image, and connectivity checks."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from consumer.settings import Settings

if TYPE_CHECKING:  # imported lazily at run time: a search starts faster
    from consumer.fetch import Fetcher
    from consumer.inference import TritonInference


class QueryError(RuntimeError):
    """The query cannot be answered; the message says why (and what to do)."""


#: Fields a search may print besides id and score (``--output-fields``); the vector is left out.
DEFAULT_OUTPUT_FIELDS = ("uri", "metadata")
_HIDDEN_FIELDS = frozenset({"embedding"})
#: Library loggers whose errors for expected conditions (a missing collection, a refused
#: connection) are said once, in the command's own words; ``--log-level DEBUG`` shows them.
_LIBRARY_LOGGERS = ("pymilvus", "grpc", "grpc._channel", "tritonclient", "urllib3", "botocore")


def default_cache_dir() -> Path:
    """The persistent JAX compilation cache of this user: ``$XDG_CACHE_HOME/image-embedder/jax``
    (``~/.cache/image-embedder/jax``), the same whatever the working directory."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "image-embedder" / "jax"


def with_stable_cache(s: Settings) -> Settings:
    """``s`` with the compilation cache at :func:`default_cache_dir` unless one was configured
    (flag, environment or settings file)."""
    if "compilation_cache_dir" in s.model_fields_set:
        return s
    return s.model_copy(update={"compilation_cache_dir": default_cache_dir()})


def quiet_libraries(level: str) -> None:
    """Keep library loggers (and gRPC's C core) from printing tracebacks for conditions the
    command reports itself; at DEBUG they stay as they are."""
    if level.upper() == "DEBUG":
        return
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def one_line(text: object, limit: int = 400) -> str:
    """A library's message reduced to one line of at most ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _milvus_message(exc: BaseException) -> str:
    """pymilvus's own message (``MilvusException.message``), wherever it is in the chain."""
    cause: BaseException | None = exc
    while cause is not None:
        message = getattr(cause, "message", None)
        if isinstance(message, str) and message:
            return one_line(message)
        cause = cause.__cause__
    return one_line(exc)


def _read_image_bytes(s: Settings, image: str, fetcher: Fetcher | None = None) -> bytes:
    """A local path (given by the operator) is read as is; a URI goes through the fetch guard."""
    if "://" not in image or image.startswith("file://"):
        path = Path(image.removeprefix("file://"))
        try:
            return path.read_bytes()
        except OSError as exc:
            raise QueryError(f"cannot read {path}: {exc.strerror}") from exc
    from consumer.fetch import FetchError

    active = fetcher if fetcher is not None else make_fetcher(s)
    try:
        return active.fetch(image)
    except FetchError as exc:
        raise QueryError(str(exc)) from exc
    finally:
        if fetcher is None:
            active.close()


def make_fetcher(s: Settings) -> Fetcher:
    """A fetcher under the ingestion's fetch policy (SSRF guard, size and pixel limits)."""
    from consumer.engine.wiring import fetch_policy
    from consumer.fetch import Fetcher

    return Fetcher(fetch_policy(s))


@dataclass
class Query:
    """One query image: what the user named, its pixels, and (once embedded) its vector."""

    image: str
    pixels: np.ndarray | None = None
    vector: np.ndarray | None = None
    error: str | None = None
    hits: list[dict[str, Any]] = field(default_factory=list)


def _pixels(query: Query) -> np.ndarray:
    """The decoded pixels of a query that has them (the callers keep only those)."""
    assert query.pixels is not None
    return query.pixels


def _vector(query: Query) -> np.ndarray:
    """The vector of an embedded query (the callers keep only those)."""
    assert query.vector is not None
    return query.vector


def load_queries(s: Settings, images: Sequence[str]) -> list[Query]:
    """Read and decode every query image before anything slow starts."""
    from consumer.fetch import FetchError, decode_image
    from schemas import preprocessing as contract

    fetcher = None
    if any("://" in image and not image.startswith("file://") for image in images):
        fetcher = make_fetcher(s)

    def load(image: str) -> Query:
        query = Query(image)
        try:
            data = _read_image_bytes(s, image, fetcher)
            query.pixels = decode_image(
                data, min_shorter_px=contract.RESIZE_SHORTER_PX, max_pixels=s.max_pixels
            )
        except QueryError as exc:
            query.error = str(exc)
        except FetchError as exc:
            query.error = f"{image}: {exc}"
        return query

    try:
        if len(images) < 4:
            return [load(image) for image in images]
        from concurrent.futures import ThreadPoolExecutor

        # decoders release the GIL: several images decode at once (the order is kept)
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            return list(pool.map(load, images))
    finally:
        if fetcher is not None:
            fetcher.close()


class Searcher:
    """One start-up for many queries: Triton's model, the collection, one compiled shape."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.client: Any = None
        self.spec: Any = None
        self.name = ""
        self.fields: list[str] = []
        self.collection = ""
        self._opening: threading.Thread | None = None
        self._opened: list[str] = []
        self._open_error: BaseException | None = None
        #: Set once :meth:`start`'s thread has read the model (or failed before it could).
        self._model_read = threading.Event()
        self._inferring: threading.Thread | None = None
        self._infer_error: BaseException | None = None

    # --- start-up in two halves: the servers on a thread, JAX on the main thread -----------
    def start(self, output_fields: Sequence[str], expr: str = "") -> None:
        """:meth:`open` and the checks of ``output_fields`` and ``expr`` on a thread, so that
        pymilvus and tritonclient load and the servers answer while the main thread imports
        JAX and compiles (JAX stays on the main thread); :meth:`wait` returns their result."""

        def run() -> None:
            try:
                self.open()
                self._opened = self.check_output_fields(output_fields)
                if expr:
                    self.check_filter(expr)
            except BaseException as exc:  # handed to the main thread by wait()
                self._open_error = exc
            finally:
                self._model_read.set()

        self._opening = threading.Thread(target=run, name="search-open", daemon=True)
        self._opening.start()

    def wait(self) -> list[str]:
        """The fields to print (see :meth:`check_output_fields`); raises what :meth:`start`'s
        thread raised."""
        if self._opening is not None:
            self._opening.join()
            self._opening = None
        if self._open_error is not None:
            raise self._open_error
        return self._opened

    # --- the servers ---------------------------------------------------------------------
    def open(self) -> None:
        """Read the model from Triton, find the collection and check that it matches."""
        from consumer.engine.wiring import collection_contract, triton_endpoint
        from consumer.inference import (
            InferenceTLSError,
            InferenceUnavailableError,
            ModelMismatchError,
            read_model_spec,
        )
        from consumer.sink import (
            CollectionMismatchError,
            MilvusCollection,
            collection_name,
        )

        s = self.s
        try:
            self.spec = read_model_spec(triton_endpoint(s), s.model, s.model_version, s.output)
            self._model_read.set()  # inference may start while Milvus is opened
        except InferenceTLSError as exc:
            raise QueryError(f"Triton at {s.triton_url}: {exc}") from exc
        except InferenceUnavailableError as exc:
            if "is not ready" in str(exc):  # Triton answered: no such model (or not loaded)
                raise QueryError(
                    f"Triton at {s.triton_url} has no ready model {s.model!r} "
                    f"(version {s.model_version or 'latest'}); check --model and "
                    "--model-version, or load the model in Triton"
                ) from exc
            raise QueryError(
                f"Triton at {s.triton_url} is not available ({one_line(exc, 200)}); start it, "
                "or point --triton-url (TRITON_URL) at it"
            ) from exc
        except ModelMismatchError as exc:
            raise QueryError(
                f"{one_line(exc)}; check --model, --model-version and --output"
            ) from exc
        contract = collection_contract(self.spec)
        try:
            self.name = collection_name(s.collection or "", contract)
        except CollectionMismatchError as exc:
            raise QueryError(str(exc)) from exc
        try:
            self.client = _milvus(s)
            exists = self.client.has_collection(self.name) or _is_alias(self.client, self.name)
        except Exception as exc:  # SinkUnavailableError, or pymilvus on the first call
            raise QueryError(
                f"Milvus at {s.milvus_uri} is unreachable ({one_line(_milvus_message(exc), 200)}); "
                "start it, or point --milvus-uri (MILVUS_URI) at it"
            ) from exc
        if not exists:
            raise QueryError(
                f"collection {self.name!r} does not exist (nor an alias of that name) in "
                f"{s.milvus_uri}; check --collection, or ingest into it with "
                f"`consumer run --collection {self.name}` first"
            )
        coll = MilvusCollection(self.client, self.name)
        try:
            coll.check(contract)
        except CollectionMismatchError as exc:
            raise QueryError(str(exc)) from exc
        try:
            desc = self.client.describe_collection(self.name)
            self.fields = [f["name"] for f in desc.get("fields", [])]
            self.collection = str(desc.get("collection_name") or self.name)  # an alias's target
            self.client.load_collection(self.name)
        except Exception as exc:
            raise QueryError(
                f"cannot load collection {self.name!r}: {_milvus_message(exc)}"
            ) from exc

    def check_output_fields(self, wanted: Sequence[str]) -> list[str]:
        known = [f for f in self.fields if f not in _HIDDEN_FIELDS]
        unknown = [f for f in wanted if f not in known]
        if unknown:
            raise QueryError(
                f"unknown output field(s) {', '.join(unknown)}; collection {self.name!r} "
                f"stores: {', '.join(known)}"
            )
        return [f for f in wanted if f != "id"]

    def check_filter(self, expr: str) -> None:
        """Let Milvus parse ``expr`` against the schema now, before the model runs."""
        try:
            self.client.query(self.name, filter=expr, output_fields=["id"], limit=1)
        except Exception as exc:
            said = _milvus_message(exc)
            hint = ""
            if "available fields" not in said:
                stored = ", ".join(f for f in self.fields if f not in _HIDDEN_FIELDS)
                hint = (
                    f"; a filter is a Milvus boolean expression over {stored} "
                    """(e.g. 'metadata["source"] == "camera"' or 'ingested_at > 0')"""
                )
            raise QueryError(f"invalid --filter {expr!r}: {said}{hint}") from exc

    # --- embedding -----------------------------------------------------------------------
    def embed(self, queries: Sequence[Query]) -> None:
        """Preprocess (one compiled shape) and infer every readable query (after :meth:`open`)."""
        self.preprocess_and_infer(queries)
        self.wait_inference()

    def _preprocessed(self, todo: Sequence[Query]) -> Iterator[np.ndarray]:
        """The model input of ``todo``, one compiled batch shape at a time (main thread)."""
        from consumer.preprocess import fit_to_canvas
        from consumer.preprocess.jaxprep import Preprocessor

        s = self.s
        bucket = _bucket_for(len(todo), s.preprocess_buckets)
        pre = Preprocessor(
            canvas_px=s.canvas_px, buckets=(bucket,), cache_dir=s.compilation_cache_dir
        )
        for start in range(0, len(todo), bucket):
            yield pre(
                [fit_to_canvas(_pixels(q), s.canvas_px) for q in todo[start : start + bucket]]
            )

    def preprocess_and_infer(self, queries: Sequence[Query]) -> None:
        """Preprocess here (main thread: JAX) and infer on a thread, in requests of
        ``infer_batch_size`` images (at most the model's batch size), each sent as soon as its
        images are preprocessed and the model has been read (by :meth:`start`'s thread, or
        :meth:`open`): Triton works while later queries are preprocessed. Then :meth:`wait`,
        then :meth:`wait_inference`, which raises the inference's errors (the servers' errors
        come first)."""
        todo = [q for q in queries if q.pixels is not None]
        if not todo:
            return
        feed: queue.SimpleQueue[np.ndarray | None] = queue.SimpleQueue()
        self._inferring = threading.Thread(
            target=self._infer_fed, args=(todo, feed), name="search-infer", daemon=True
        )
        self._inferring.start()
        try:
            for tensor in self._preprocessed(todo):
                feed.put(tensor)
        finally:
            feed.put(None)  # the end (also when preprocessing failed)

    def wait_inference(self) -> None:
        """Wait for :meth:`preprocess_and_infer`'s thread; raises what it raised."""
        if self._inferring is not None:
            self._inferring.join()
            self._inferring = None
        if self._infer_error is not None:
            raise self._infer_error

    def _infer_fed(self, todo: Sequence[Query], feed: queue.SimpleQueue[np.ndarray | None]) -> None:
        """Infer ``todo`` from the tensors ``feed`` brings, in order (``None``: the end)."""
        try:
            if self.spec is None:
                self._model_read.wait()
            if self.spec is None:  # the model could not be read: wait() says why
                return
            step = self._request_size()
            triton = self._triton()
            try:
                done, have, ended = 0, 0, False
                pending: list[np.ndarray] = []
                while not ended:
                    tensor = feed.get()
                    ended = tensor is None
                    if tensor is not None:
                        pending.append(tensor)
                        have += len(tensor)
                    while have >= step or (ended and have):
                        batch = pending[0] if len(pending) == 1 else np.concatenate(pending)
                        count = min(step, have)
                        self._infer_request(triton, todo[done : done + count], batch[:count])
                        done, have = done + count, have - count
                        pending = [batch[count:]] if have else []
            finally:
                triton.close()
        except BaseException as exc:  # handed to the main thread by wait_inference()
            self._infer_error = exc

    def _request_size(self) -> int:
        step = self.s.infer_batch_size
        if self.spec.max_batch_size:
            step = min(step, self.spec.max_batch_size)
        return int(step)

    def _triton(self) -> TritonInference:
        from consumer.engine.wiring import triton_endpoint
        from consumer.inference import TritonInference

        return TritonInference(triton_endpoint(self.s), self.spec)

    def _infer_request(
        self, triton: TritonInference, chunk: Sequence[Query], tensor: np.ndarray
    ) -> None:
        """One request to Triton: the unit vectors of ``chunk``'s queries."""
        from consumer.inference import (
            InferenceRejectedError,
            InferenceUnavailableError,
            l2_normalize,
        )

        try:
            vectors = triton.infer(tensor)
        except (InferenceUnavailableError, InferenceRejectedError) as exc:
            raise QueryError(f"inference failed: {one_line(exc)}") from exc
        unit, valid = l2_normalize(vectors)
        for i, query in enumerate(chunk):
            if valid[i]:
                query.vector = unit[i]
            else:
                query.error = f"{query.image}: the model returned a degenerate vector"

    # --- search --------------------------------------------------------------------------
    def search(
        self,
        queries: Sequence[Query],
        top_k: int,
        expr: str = "",
        output_fields: Sequence[str] = DEFAULT_OUTPUT_FIELDS,
        *,
        collapse_duplicates: bool = False,
    ) -> None:
        """One batched search for every embedded query; fills ``query.hits`` best first.

        ``collapse_duplicates`` hides the rows flagged as near-duplicates of an original that is
        still stored (a copy whose original was deleted is shown again); more neighbours are
        asked for until ``top_k`` remain or the collection has no more."""
        from consumer.sink import neardup

        ready = [q for q in queries if q.vector is not None]
        if not ready:
            return
        in_row = all(f in self.fields for f in neardup.FIELDS)
        fields = list(output_fields)
        if collapse_duplicates and in_row:
            fields += [f for f in neardup.FIELDS if f not in fields]
        limit = min(_MAX_LIMIT, top_k * 4 + 16) if collapse_duplicates else top_k
        while True:
            try:
                results = self.client.search(
                    self.name,
                    data=[_vector(q).tolist() for q in ready],
                    limit=limit,
                    filter=expr,
                    output_fields=fields or ["id"],
                    search_params={"metric_type": "COSINE"},
                )
                if not collapse_duplicates:
                    break
                kept = self._collapse(results, in_row, top_k)
            except Exception as exc:
                raise QueryError(f"search failed: {_milvus_message(exc)}") from exc
            short = any(
                len(k) < top_k and len(hits) >= limit for k, hits in zip(kept, results, strict=True)
            )
            results = kept
            if not short or limit >= _MAX_LIMIT:
                break
            limit = min(_MAX_LIMIT, limit * 4)
        for query, hits in zip(ready, results, strict=True):
            query.hits = [
                {
                    "id": h["id"],
                    "score": clip_score(h["distance"]),
                    **{f: h["entity"].get(f) for f in output_fields},
                }
                for h in hits
            ]

    def _collapse(self, results: Any, in_row: bool, top_k: int) -> list[list[dict[str, Any]]]:
        """Each query's hits without the flagged rows whose original is still stored."""
        from consumer.sink import neardup

        every = [h for hits in results for h in hits]
        flags = neardup.read_flags(self.client, self.collection, every, in_row=in_row)
        originals = sorted({f.of for f in flags.values()})
        stored: set[str] = set()
        if originals:
            rows = self.client.get(self.name, ids=originals, output_fields=["id"])
            stored = {str(r["id"]) for r in rows}
        return [
            [h for h in hits if str(h["id"]) not in flags or flags[str(h["id"])].of not in stored][
                :top_k
            ]
            for hits in results
        ]

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()


def write_contact_sheet(
    s: Settings, queries: Sequence[Query], path: Path, top_k: int
) -> tuple[Path, int]:
    """Draw one row per query: the query image, then its neighbours, fetched under the
    ingestion's fetch policy. Returns the path and how many neighbours are placeholders."""
    from concurrent.futures import ThreadPoolExecutor

    from consumer import contactsheet
    from consumer.fetch import FetchError, decode_image

    uris = sorted({h["uri"] for q in queries for h in q.hits if h.get("uri")})
    fetcher = make_fetcher(s)

    def load(uri: str) -> tuple[np.ndarray | None, str | None]:
        try:
            data = fetcher.fetch(uri)
            return decode_image(
                data, min_shorter_px=contactsheet.THUMB_PX, max_pixels=s.max_pixels
            ), None
        except FetchError as exc:
            return None, f"not fetched: {one_line(exc, 160)}"
        except Exception as exc:  # a drawing never fails for one neighbour
            return None, f"not fetched: {type(exc).__name__}"

    try:
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(uris)))) as pool:
            loaded = dict(zip(uris, pool.map(load, uris), strict=True))
    finally:
        fetcher.close()
    rows = []
    missing = 0
    for query in queries:
        label = Path(query.image).name if "://" not in query.image else query.image
        row = [
            contactsheet.Tile(
                query.pixels,
                ["query", label],
                reason=query.error,
                is_query=True,
            )
        ]
        for rank, hit in enumerate(query.hits[:top_k], start=1):
            pixels, reason = loaded.get(hit.get("uri") or "", (None, "no uri stored"))
            missing += pixels is None
            row.append(
                contactsheet.Tile(
                    pixels,
                    [f"#{rank}  score {hit['score']:.3f}", str(hit["id"]), _uri_name(hit)],
                    reason=reason,
                )
            )
        rows.append(row)
    return contactsheet.write(path, rows), missing


def _uri_name(hit: dict[str, Any]) -> str:
    """The last path segment of a hit's URI (never its query string)."""
    from urllib.parse import unquote, urlsplit

    try:
        return unquote(urlsplit(hit.get("uri") or "").path.rsplit("/", 1)[-1])
    except ValueError:
        return ""


#: The most neighbours one Milvus search returns.
_MAX_LIMIT = 16384


def clip_score(value: float) -> float:
    """Cosine similarity kept in [-1, 1] (float32 sums of unit vectors can pass 1 slightly)."""
    return max(-1.0, min(1.0, float(value)))


def _bucket_for(count: int, buckets: Sequence[int]) -> int:
    """The one batch shape to compile: the smallest bucket holding every query, else the
    largest (the queries then go through it in chunks)."""
    ordered = sorted(set(buckets))
    for bucket in ordered:
        if count <= bucket:
            return bucket
    return ordered[-1]


def _is_alias(client: Any, name: str) -> bool:
    try:
        return bool(client.describe_alias(name).get("collection_name"))
    except Exception:
        return False


def _milvus(s: Settings) -> Any:
    from consumer.sink import connect

    return connect(
        s.milvus_uri,
        s.milvus_token.get_secret_value() if s.milvus_token else None,
        s.milvus_db,
        s.milvus_timeout_s,
        s.milvus_server_pem_path,
    )


def run_checks(s: Settings) -> list[tuple[str, bool, str]]:
    """Each check as (name, passed, detail): broker, topic, Triton model, Milvus collection."""
    from confluent_kafka.admin import AdminClient

    from consumer import preflight
    from consumer.engine.wiring import collection_contract, triton_endpoint
    from consumer.inference import read_model_spec
    from consumer.sink import MilvusCollection, collection_name

    results: list[tuple[str, bool, str]] = []
    topics: dict[str, Any] | None = None
    refused = preflight.check_connection(s, timeout_s=10)  # authentication, TLS: the cause
    try:
        if refused:
            raise RuntimeError(refused)
        admin = AdminClient(s.kafka_common())
        meta = admin.list_topics(timeout=10)
        topics = meta.topics
        results.append(("kafka", True, f"{len(meta.brokers)} broker(s) at {s.bootstrap_servers}"))
    except Exception as exc:
        detail = refused or f"broker at {s.bootstrap_servers} unreachable: {exc}"
        results.append(("kafka", False, detail))
    if s.topic:
        if topics is None:
            results.append(("topic", False, "unknown: the broker is unreachable"))
        elif s.topic in topics and topics[s.topic].error is None:
            parts = len(topics[s.topic].partitions)
            results.append(("topic", True, f"{s.topic} has {parts} partition(s)"))
        else:
            results.append(("topic", False, f"topic {s.topic!r} does not exist or is not visible"))
        if topics is not None:  # each ACL the consumer needs, separately
            results.extend(preflight.acl_checks(admin, s))
    spec = None
    try:
        spec = read_model_spec(triton_endpoint(s), s.model, s.model_version, s.output)
        results.append(
            (
                "triton",
                True,
                f"{spec.name} v{spec.version} ready; {spec.output} has {spec.dim} dims",
            )
        )
    except Exception as exc:
        results.append(("triton", False, f"{s.triton_url}: {exc}"))
    try:
        client = _milvus(s)
        client.list_collections()
        results.append(("milvus", True, f"reachable at {s.milvus_uri}"))
        if s.collection:
            name = s.collection
            if spec is not None:
                name = collection_name(s.collection, collection_contract(spec))
            coll = MilvusCollection(client, name)
            if not client.has_collection(name):
                results.append(("collection", True, f"{name} missing; run creates it"))
            elif spec is None:
                results.append(("collection", False, "cannot compare: the model is unavailable"))
            else:
                try:
                    coll.check(collection_contract(spec))
                    results.append(("collection", True, f"{name} matches the model"))
                except Exception as exc:
                    results.append(("collection", False, str(exc)))
    except Exception as exc:
        results.append(("milvus", False, f"{s.milvus_uri} unreachable: {exc}"))
    s3 = s3_check(s)
    if s3 is not None:
        results.append(s3)
    return results


def s3_check(s: Settings) -> tuple[str, bool, str] | None:
    """Where s3:// credentials come from and whether each allowed bucket answers.

    ``None`` when s3 is not an allowed scheme. Without credentials the check fails only when
    buckets are configured (s3:// is then meant to be used); a 403 to HeadBucket passes with a
    note, since reading objects needs only s3:GetObject.
    """
    if "s3" not in s.allowed_schemes:
        return None
    import botocore.session
    from botocore.exceptions import BotoCoreError, ClientError

    from consumer.engine.wiring import fetch_policy
    from consumer.fetch.s3 import make_client

    try:
        credentials = botocore.session.get_session().get_credentials()
        client = make_client(fetch_policy(s))
    except BotoCoreError as exc:
        return ("s3", False, f"cannot configure the S3 client: {exc}")
    endpoint = client.meta.endpoint_url
    if credentials is None:
        detail = f"no AWS credentials found (endpoint {endpoint}): s3:// messages would fail"
        return ("s3", not s.allowed_buckets, detail)
    notes = []
    passed = True
    for bucket in s.allowed_buckets:
        try:
            client.head_bucket(Bucket=bucket)
            notes.append(f"{bucket} ok")
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 403:
                notes.append(f"{bucket} denied to HeadBucket (no s3:ListBucket?)")
            else:
                passed = False
                notes.append(
                    f"{bucket}: {status or ''} {exc.response.get('Error', {}).get('Code', '')}"
                )
        except BotoCoreError as exc:
            passed = False
            notes.append(f"{bucket}: {type(exc).__name__}")
    buckets = "; ".join(notes) if notes else "every bucket allowed (no --allowed-bucket)"
    source = getattr(credentials, "method", "unknown")
    client.close()
    return ("s3", passed, f"credentials from {source}, endpoint {endpoint}; {buckets}")
