"""``python -m consumer``: run, backfill (plan, run, status), search, check, promote."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from consumer.settings import Settings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Turn image URIs published to Kafka into searchable vectors in Milvus.",
)

EXIT_FATAL = 1
EXIT_CONFIG = 2
EXIT_ABORTED = 130
#: A bounded run (--until-end / --until) stopped before its end: EX_TEMPFAIL, "try again".
EXIT_STOPPED_EARLY = 75
#: Set by a command whose process may end without the interpreter's teardown (see :func:`main`).
_end_at_once = False

# --- shared options ---------------------------------------------------------------------------
Config = Annotated[Path | None, typer.Option("--config", help="TOML/JSON/YAML settings file.")]
Bootstrap = Annotated[
    str | None, typer.Option("--bootstrap-servers", help="Kafka (env KAFKA_BOOTSTRAP_SERVERS).")
]
TritonUrl = Annotated[
    str | None, typer.Option("--triton-url", help="grpc://host:port or http://host:port.")
]
Model = Annotated[str | None, typer.Option("--model", help="Triton model name.")]
ModelVersion = Annotated[str | None, typer.Option("--model-version", help="Model version.")]
Output = Annotated[str | None, typer.Option("--output", help="Model output used as embedding.")]
MilvusUri = Annotated[
    str | None, typer.Option("--milvus-uri", help="Milvus server URI or Milvus Lite path.")
]
Collection = Annotated[str | None, typer.Option("--collection", help="Milvus collection.")]
Topic = Annotated[str | None, typer.Option("--topic", help="Topic of image.v1 messages.")]
LogFormat = Annotated[str | None, typer.Option("--log-format", help="auto, json or console.")]
LogLevel = Annotated[str | None, typer.Option("--log-level", help="DEBUG, INFO, WARNING...")]


def _settings(**cli: Any) -> Settings:
    """Build settings from explicitly given flags (None means: not given)."""
    given = {k: v for k, v in cli.items() if v is not None and v != () and v != []}
    try:
        return Settings(**given)
    except Exception as exc:
        typer.echo(f"error: invalid settings: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from exc


def _configure_logging(s: Settings) -> None:
    from consumer.observability import configure_logging

    configure_logging(s.log_level, s.log_format)


def _backfill_group(collection: str, start: str, until: str | None) -> str:
    """The default group of a backfill, derived from its specs alone: the same command started
    again (after a crash, or a pod's eviction) finds the same group and resumes its plan."""

    def slug(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()

    return f"backfill-{collection}-{slug(start)}-to-{slug(until) if until else 'end'}"


@app.command()
def run(
    topic: Topic = None,
    group: Annotated[str | None, typer.Option("--group", help="Consumer group.")] = None,
    collection: Collection = None,
    until_end: Annotated[
        bool | None, typer.Option("--until-end", help="Stop at the end offsets seen at start.")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Stop at messages after this ISO-8601 time.")
    ] = None,
    start_from: Annotated[
        str | None,
        typer.Option("--from", help="earliest | latest | ISO-8601 time | partition:offset,..."),
    ] = None,
    reset_offsets: Annotated[
        bool | None, typer.Option("--reset-offsets", help="Let --from move a group's offsets.")
    ] = None,
    rewrite_same_version: Annotated[
        bool | None,
        typer.Option(
            "--rewrite-same-version",
            help="Rewrite rows already stored at the same version (e.g. after fixing the model).",
        ),
    ] = None,
    max_rate: Annotated[
        float | None, typer.Option("--max-rate", help="Messages per second at most.")
    ] = None,
    near_duplicate_threshold: Annotated[
        float | None,
        typer.Option(
            "--near-duplicate-threshold",
            help="Flag rows at least this cosine-similar to a stored original (off by default).",
        ),
    ] = None,
    file_root: Annotated[
        list[Path] | None,
        typer.Option("--file-root", help="Directory file:// URIs may read from (repeatable)."),
    ] = None,
    dlq_topic: Annotated[
        str | None, typer.Option("--dlq-topic", help="Dead-letter topic (default <topic>.dlq).")
    ] = None,
    bootstrap_servers: Bootstrap = None,
    triton_url: TritonUrl = None,
    model: Model = None,
    model_version: ModelVersion = None,
    output: Output = None,
    milvus_uri: MilvusUri = None,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Port of /metrics /livez /readyz.")
    ] = None,
    no_metrics: Annotated[bool, typer.Option("--no-metrics", help="Serve no metrics.")] = False,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    infer_threads: Annotated[int | None, typer.Option("--infer-threads")] = None,
    infer_batch_size: Annotated[int | None, typer.Option("--infer-batch-size")] = None,
    io_threads: Annotated[int | None, typer.Option("--io-threads")] = None,
    io_nice: Annotated[int | None, typer.Option("--io-nice")] = None,
    malloc_arenas: Annotated[
        int | None, typer.Option("--malloc-arenas", help="glibc malloc arenas (0: its default)")
    ] = None,
    max_rows_in_flight: Annotated[int | None, typer.Option("--max-rows-in-flight")] = None,
    flush_interval_s: Annotated[float | None, typer.Option("--flush-interval-s")] = None,
    kafka_config: Annotated[
        list[str] | None, typer.Option("--kafka-config", help="librdkafka key=value (repeat).")
    ] = None,
    allow_private_networks: Annotated[
        bool | None, typer.Option("--allow-private-networks", help="Turn the SSRF guard off.")
    ] = None,
    allowed_network: Annotated[
        list[str] | None, typer.Option("--allowed-network", help="CIDR allowed (repeatable).")
    ] = None,
    follow_redirects: Annotated[bool | None, typer.Option("--follow-redirects")] = None,
    s3_endpoint_url: Annotated[
        str | None,
        typer.Option(
            "--s3-endpoint-url",
            help="S3-compatible endpoint (MinIO, Ceph, R2); over AWS_ENDPOINT_URL.",
        ),
    ] = None,
    s3_region: Annotated[
        str | None, typer.Option("--s3-region", help="S3 region (default: the AWS chain's).")
    ] = None,
    s3_path_style: Annotated[
        bool | None,
        typer.Option("--s3-path-style", help="Path-style S3 URLs (dotted bucket names over TLS)."),
    ] = None,
    s3_requester_pays: Annotated[
        bool | None, typer.Option("--s3-requester-pays", help="Read requester-pays buckets.")
    ] = None,
    allowed_bucket: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-bucket", help="Bucket s3:// URIs may name (repeatable; default: any)."
        ),
    ] = None,
    summary_json: Annotated[
        Path | None, typer.Option("--summary-json", help="Write the run summary here.")
    ] = None,
    auth_failure_timeout_s: Annotated[
        float | None,
        typer.Option(
            "--auth-failure-timeout-s",
            help="How long an authentication or ACL failure during a run is retried (then exit 1).",
        ),
    ] = None,
    config: Config = None,
    log_format: LogFormat = None,
    log_level: LogLevel = None,
) -> None:
    """Consume image URIs, embed them and upsert the vectors into Milvus."""
    if start_from and not group and collection:
        group = _backfill_group(collection, start_from, until)
    s = _settings(
        config_file=config,
        topic=topic,
        group=group,
        collection=collection,
        until_end=until_end,
        until=until,
        start_from=start_from,
        reset_offsets=reset_offsets,
        rewrite_same_version=rewrite_same_version,
        max_rate=max_rate,
        near_duplicate_threshold=near_duplicate_threshold,
        file_roots=tuple(file_root) if file_root else None,
        dlq_topic=dlq_topic,
        bootstrap_servers=bootstrap_servers,
        triton_url=triton_url,
        model=model,
        model_version=model_version,
        output=output,
        milvus_uri=milvus_uri,
        metrics_port=metrics_port,
        batch_size=batch_size,
        infer_threads=infer_threads,
        infer_batch_size=infer_batch_size,
        io_threads=io_threads,
        io_nice=io_nice,
        malloc_arenas=malloc_arenas,
        max_rows_in_flight=max_rows_in_flight,
        flush_interval_s=flush_interval_s,
        kafka_config=kafka_config,
        allow_private_networks=allow_private_networks,
        allowed_networks=tuple(allowed_network) if allowed_network else None,
        follow_redirects=follow_redirects,
        s3_endpoint_url=s3_endpoint_url,
        s3_region=s3_region,
        s3_path_style=s3_path_style,
        s3_requester_pays=s3_requester_pays,
        allowed_buckets=tuple(allowed_bucket) if allowed_bucket else None,
        summary_json=summary_json,
        auth_failure_timeout_s=auth_failure_timeout_s,
        log_format=log_format,
        log_level=log_level,
    )
    _configure_logging(s)
    from consumer.engine.wiring import limit_malloc_arenas

    limit_malloc_arenas(s.malloc_arenas)  # before JAX, gRPC and librdkafka start their threads
    from consumer.engine import Engine, EngineFatalError, RunOutcome
    from consumer.observability import HealthServer, Metrics, get_logger

    log = get_logger("consumer.cli")
    log.info("starting", settings=s.redacted())
    if "s3" in s.allowed_schemes:
        if s.allowed_buckets:
            log.info("s3:// URIs limited to the allowed buckets", buckets=list(s.allowed_buckets))
        else:
            log.warning(
                "s3:// URIs may name every bucket the credentials can read "
                "(no --allowed-bucket given)"
            )
    metrics = Metrics()
    progress = _Progress() if (s.until_end or s.until) and sys.stderr.isatty() else None
    try:
        engine = Engine(s, metrics=metrics, on_progress=progress.update if progress else None)
    except EngineFatalError as exc:  # settings the engine cannot run with
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from exc
    watcher = None
    if s.backfill_worker:  # stops this worker once the whole plan is done, not only its share
        from consumer.backfill import PlanWatcher

        watcher = PlanWatcher(s, engine.request_stop, metrics.set_backfill_remaining).start()
    server = None
    if not no_metrics and s.metrics_port is not None:
        server = HealthServer(
            metrics.registry,
            tick_age=metrics.seconds_since_tick,
            readiness=engine.readiness,
            host=s.metrics_host,
            port=s.metrics_port,
        )
        server.start()
        log.info("metrics served", port=server.port)
    try:
        summary = engine.run()
    except EngineFatalError as exc:
        log.error("fatal", error=str(exc))
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_FATAL) from exc
    finally:
        if progress:
            progress.close()
        if server is not None:
            server.stop()
        if watcher is not None:
            watcher.stop()
    if summary.outcome is RunOutcome.ABORTED:  # a second SIGINT
        raise typer.Exit(EXIT_ABORTED)
    if s.summary_json:
        s.summary_json.parent.mkdir(parents=True, exist_ok=True)
        s.summary_json.write_bytes(summary.to_json())
    typer.echo(
        f"ingested={summary.ingested} dead_lettered={summary.dead_lettered} "
        f"deleted={summary.deleted} skipped_stale={summary.skipped_stale} "
        f"superseded={summary.superseded} seconds={summary.seconds:.1f} "
        f"startup_seconds={summary.startup_seconds:.1f} "
        f"images_per_second={summary.images_per_second:.1f}"
    )
    if summary.outcome is RunOutcome.STOPPED_EARLY and not (watcher and watcher.plan_complete()):
        log.warning("stopped before the end of the bounded run; run it again to finish it")
        raise typer.Exit(EXIT_STOPPED_EARLY)


class _Progress:
    """Done of total, rate and time left for a bounded run on a terminal."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("ingesting"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.1f} msg/s"),
            TimeRemainingColumn(),
            transient=True,
        )
        self._task = self._progress.add_task("run", total=None, rate=0.0)
        self._started = time.monotonic()
        self._last = 0.0
        self._progress.start()

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < 0.2:
            return
        self._last = now
        rate = done / max(1e-6, now - self._started)
        self._progress.update(self._task, completed=done, total=total or None, rate=rate)

    def close(self) -> None:
        self._progress.stop()


@app.command()
def search(
    images: Annotated[
        list[str], typer.Argument(help="Local image paths or URIs to search with (one or more).")
    ],
    collection: Collection = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=16384)] = 5,
    filter_expr: Annotated[
        str | None,
        typer.Option(
            "--filter",
            help='Milvus boolean expression over the stored fields, e.g. \'metadata["camera"] '
            "== \"x\"' or 'ingested_at > 1700000000000'.",
        ),
    ] = None,
    output_fields: Annotated[
        str,
        typer.Option("--output-fields", help="Comma-separated stored fields to print per hit."),
    ] = "uri,metadata",
    collapse_duplicates: Annotated[
        bool,
        typer.Option(
            "--collapse-duplicates",
            help="Hide rows flagged as near-duplicates of a stored original.",
        ),
    ] = False,
    contact_sheet: Annotated[
        Path | None,
        typer.Option("--contact-sheet", help="Also draw the results as a PNG contact sheet."),
    ] = None,
    file_root: Annotated[
        list[Path] | None,
        typer.Option("--file-root", help="Directory file:// neighbours may be read from."),
    ] = None,
    allow_private_networks: Annotated[
        bool | None, typer.Option("--allow-private-networks", help="Turn the SSRF guard off.")
    ] = None,
    allowed_network: Annotated[
        list[str] | None, typer.Option("--allowed-network", help="CIDR allowed (repeatable).")
    ] = None,
    triton_url: TritonUrl = None,
    model: Model = None,
    model_version: ModelVersion = None,
    output: Output = None,
    milvus_uri: MilvusUri = None,
    config: Config = None,
    log_level: LogLevel = None,
) -> None:
    """Embed each IMAGE through the same preprocessing and model; print its nearest rows as
    JSON lines ({"query", "rank", "id", "score", fields...}), and draw them with --contact-sheet."""
    global _end_at_once
    _end_at_once = True  # nothing is left to clean up once it returns or exits
    s = _settings(
        config_file=config,
        collection=collection,
        triton_url=triton_url,
        model=model,
        model_version=model_version,
        output=output,
        milvus_uri=milvus_uri,
        file_roots=tuple(file_root) if file_root else None,
        allow_private_networks=allow_private_networks,
        allowed_networks=tuple(allowed_network) if allowed_network else None,
        log_level=log_level or "WARNING",
    )
    _configure_logging(s)
    if not s.collection:
        typer.echo("error: --collection is required", err=True)
        raise typer.Exit(EXIT_CONFIG)
    if contact_sheet is not None and contact_sheet.suffix.lower() != ".png":
        typer.echo(f"error: --contact-sheet must name a .png file, not {contact_sheet}", err=True)
        raise typer.Exit(EXIT_CONFIG)
    fields = [f.strip() for f in output_fields.split(",") if f.strip()]
    from consumer import query as q

    q.quiet_libraries(s.log_level)
    s = q.with_stable_cache(s)
    queries = q.load_queries(s, images)
    failed = [x for x in queries if x.error]
    for x in failed:
        typer.echo(f"error: {x.error}", err=True)
    if len(failed) == len(queries):
        raise typer.Exit(EXIT_FATAL)
    searcher = q.Searcher(s)
    try:
        # the servers and their checks on a thread while JAX compiles here (one start-up);
        # each batch goes to Triton as soon as it is preprocessed and the model is known
        searcher.start(fields, filter_expr or "")
        try:
            searcher.preprocess_and_infer(queries)
        finally:
            shown = searcher.wait()  # the servers' errors first: they say what to fix
        wanted = shown if contact_sheet is None or "uri" in shown else [*shown, "uri"]
        searcher.wait_inference()
        searcher.search(
            queries, top_k, filter_expr or "", wanted, collapse_duplicates=collapse_duplicates
        )
    except q.QueryError as exc:
        import logging

        logging.getLogger("consumer.search").debug("search failed", exc_info=exc)
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_FATAL) from exc
    finally:
        searcher.close()
    out = sys.stdout
    for x in queries:
        if x.vector is None:
            if x not in failed:
                typer.echo(f"error: {x.error}", err=True)
            continue
        for rank, hit in enumerate(x.hits, start=1):
            line = {"query": x.image, "rank": rank, "id": hit["id"], "score": hit["score"]}
            line.update({f: hit.get(f) for f in shown})
            out.write(orjson.dumps(line).decode() + "\n")
    out.flush()
    if contact_sheet is not None:
        path, missing = q.write_contact_sheet(s, queries, contact_sheet, top_k)
        note = f" ({missing} neighbour(s) could not be fetched)" if missing else ""
        typer.echo(f"contact sheet: {path}{note}", err=True)
    if any(x.vector is None for x in queries):
        raise typer.Exit(EXIT_FATAL)


@app.command()
def check(
    topic: Topic = None,
    collection: Collection = None,
    bootstrap_servers: Bootstrap = None,
    triton_url: TritonUrl = None,
    model: Model = None,
    model_version: ModelVersion = None,
    output: Output = None,
    milvus_uri: MilvusUri = None,
    config: Config = None,
) -> None:
    """Validate settings and connectivity; say what is wrong."""
    s = _settings(
        config_file=config,
        topic=topic,
        collection=collection,
        bootstrap_servers=bootstrap_servers,
        triton_url=triton_url,
        model=model,
        model_version=model_version,
        output=output,
        milvus_uri=milvus_uri,
        log_level="ERROR",
    )
    _configure_logging(s)
    from consumer.query import run_checks

    ok = True
    for name, passed, detail in run_checks(s):
        mark = "ok  " if passed else "FAIL"
        typer.echo(f"{mark} {name}: {detail}")
        ok = ok and passed
    if not ok:
        raise typer.Exit(EXIT_FATAL)


@app.command()
def promote(
    alias: Annotated[str, typer.Option("--alias", help="Alias readers query.")],
    collection: Annotated[str, typer.Option("--collection", help="Collection to point it at.")],
    milvus_uri: MilvusUri = None,
    config: Config = None,
) -> None:
    """Switch a Milvus alias to COLLECTION, so readers move to it at once."""
    s = _settings(config_file=config, milvus_uri=milvus_uri, collection=collection)
    from consumer.sink import MilvusCollection, connect

    client = connect(  # every connection setting, TLS included, as the consumer uses them
        s.milvus_uri,
        s.milvus_token.get_secret_value() if s.milvus_token else None,
        s.milvus_db,
        s.milvus_timeout_s,
        s.milvus_server_pem_path,
    )
    if not client.has_collection(collection):
        typer.echo(f"error: collection {collection!r} does not exist", err=True)
        raise typer.Exit(EXIT_FATAL)
    previous = MilvusCollection(client, collection).promote(alias)
    typer.echo(f"alias {alias} -> {collection} (was {previous or 'unset'})")


# --- backfill: plan once, run any number of workers, watch them ------------------------------
backfill_app = typer.Typer(
    no_args_is_help=True,
    help="Planned backfills: plan once, run any number of workers, see how far they are.",
)
app.add_typer(backfill_app, name="backfill")
Group = Annotated[str | None, typer.Option("--group", help="The backfill's consumer group.")]
KafkaConfig = Annotated[
    list[str] | None, typer.Option("--kafka-config", help="librdkafka key=value (repeat).")
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON.")]
#: Flags of ``run`` that belong to the plan: a worker never takes them.
_PLAN_FLAGS = ("--from", "--until", "--until-end", "--reset-offsets")


def _backfill_settings(**cli: Any) -> Settings:
    s = _settings(**cli)
    _configure_logging(s)
    if not s.topic or not s.group:
        typer.echo("error: --topic and --group are required", err=True)
        raise typer.Exit(EXIT_CONFIG)
    return s


@backfill_app.command("plan")
def backfill_plan(
    topic: Topic = None,
    group: Group = None,
    start_from: Annotated[
        str | None,
        typer.Option("--from", help="earliest | latest | ISO-8601 time | partition:offset,..."),
    ] = None,
    until_end: Annotated[
        bool | None, typer.Option("--until-end", help="End at the end offsets seen now.")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="End at messages after this ISO-8601 time.")
    ] = None,
    max_rate: Annotated[
        float | None,
        typer.Option("--max-rate", help="Messages per second over all workers together."),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace the group's other plan or offsets.")
    ] = False,
    json_out: JsonOut = False,
    bootstrap_servers: Bootstrap = None,
    kafka_config: KafkaConfig = None,
    config: Config = None,
    log_level: LogLevel = None,
) -> None:
    """Record a backfill's start and end per partition in the group's commits (once: the same
    plan again is a no-op); then start any number of 'backfill run' workers."""
    s = _backfill_settings(
        config_file=config,
        topic=topic,
        group=group,
        start_from=start_from,
        until_end=until_end,
        until=until,
        max_rate=max_rate,
        bootstrap_servers=bootstrap_servers,
        kafka_config=kafka_config,
        log_level=log_level or "WARNING",
    )
    from confluent_kafka import KafkaException

    from consumer.backfill import make_plan
    from consumer.engine import EngineFatalError

    try:
        result = make_plan(s, replace=replace)
    except (EngineFatalError, KafkaException) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_FATAL) from exc
    if json_out:
        typer.echo(orjson.dumps(result.to_dict()).decode())
    else:
        p = result.plan
        what = "planned" if result.made else "already planned (nothing changed)"
        typer.echo(f"plan {p.plan_id} {what}: {s.topic} for group {s.group}")
        if result.replaced:
            typer.echo(f"replaced plan {result.replaced}")
        for k in sorted(p.ends):
            typer.echo(f"  partition {k}: {p.starts[k]} -> {p.ends[k]}")
        typer.echo(
            f"{len(p.ends)} partition(s), {p.messages} message(s) to process, "
            f"max rate {p.max_rate or 'unlimited'}"
        )
    if result.note:
        typer.echo(f"note: {result.note}", err=True)


@backfill_app.command(
    "run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def backfill_run(ctx: typer.Context) -> None:
    """A worker of the group's planned backfill: takes 'run' flags (--topic, --group,
    --collection, ...), never --from/--until; exits 0 once the whole plan is done, 75 when
    stopped before."""
    import os

    args = list(ctx.args)
    given = [a for a in args if a.split("=", 1)[0] in _PLAN_FLAGS]
    if given:
        typer.echo(
            f"error: {given[0].split('=', 1)[0]} belongs to the plan ('backfill plan'); a "
            "worker reads it from the group's commits",
            err=True,
        )
        raise typer.Exit(EXIT_CONFIG)
    os.environ["IMAGE_EMBEDDER_BACKFILL_WORKER"] = "true"
    app(args=["run", *args], prog_name="consumer")  # exits with run's status


@backfill_app.command("status")
def backfill_status(
    topic: Topic = None,
    group: Group = None,
    interval: Annotated[
        float, typer.Option("--interval", min=0, help="Seconds between the two reads (rate).")
    ] = 5.0,
    json_out: JsonOut = False,
    bootstrap_servers: Bootstrap = None,
    kafka_config: KafkaConfig = None,
    config: Config = None,
    log_level: LogLevel = None,
) -> None:
    """Per partition done/total, overall progress, the current rate and the time left."""
    s = _backfill_settings(
        config_file=config,
        topic=topic,
        group=group,
        bootstrap_servers=bootstrap_servers,
        kafka_config=kafka_config,
        log_level=log_level or "WARNING",
    )
    from confluent_kafka import KafkaException

    from consumer.backfill import status
    from consumer.engine import EngineFatalError

    try:
        st = status(s, interval)
    except (EngineFatalError, KafkaException) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_FATAL) from exc
    d = st.to_dict()
    if json_out:
        typer.echo(orjson.dumps(d).decode())
        return
    typer.echo(f"plan {d['plan']}: --from {d['from']} to {d['until']}, {d['members']} worker(s)")
    for row in d["partitions"]:
        typer.echo(f"  partition {row['partition']}: {row['done']}/{row['total']}")
    rate = "unknown" if d["rate"] is None else f"{d['rate']:.1f} msg/s"
    eta = "unknown" if d["eta_s"] is None else f"{d['eta_s']:.0f} s"
    typer.echo(
        f"{d['done']}/{d['total']} ({d['progress']:.1%}), {d['remaining']} remaining, "
        f"rate {rate}, time left {eta}{' (complete)' if d['complete'] else ''}"
    )


def main() -> None:
    try:
        app()
    except SystemExit as exc:
        if _end_at_once and (exc.code is None or isinstance(exc.code, int)):
            _exit_now(exc.code or 0)
        raise


def _exit_now(code: int) -> None:
    """End the process now, once its output is flushed, without the interpreter's teardown:
    finalizing the modules a search loads (JAX, pymilvus, gRPC, pandas) takes about half a
    second, as long as a search's own work. Returns when a stream cannot be flushed (a closed
    pipe): the interpreter's own exit then reports it, as it would have."""
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(code)
