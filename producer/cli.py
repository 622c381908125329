"""``python -m producer``: publish image URIs, create topics, redrive dead letters.

The commands only parse options and print; the work is in ``publisher``, ``sources``,
``topics`` and ``redrive``. Exit codes: 0 success, 1 something was not done (listed on stderr),
2 bad usage.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, Final

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from producer.connection import kafka_settings
from producer.exceptions import InvalidInput, ProducerError
from producer.publisher import (
    COMPRESSIONS,
    DEFAULT_LINGER_MS,
    DEFAULT_TIMEOUT_S,
    Delivery,
    Publisher,
    RateLimiter,
    parse_settings,
)
from producer.redrive import (
    DEFAULT_MAX_REDRIVES,
    RedriveOptions,
    Redriver,
    RedriveReport,
    parse_where,
)
from producer.sources import (
    IdFrom,
    Item,
    MessageOptions,
    items_from_lines,
    items_from_scan,
    scan,
)
from producer.topics import DEFAULT_DLQ_RETENTION_MS, create_topics
from schemas import encode_message, redact_uri
from schemas.message import METADATA_MAX_KEY_LENGTH

DEFAULT_BOOTSTRAP: Final = "127.0.0.1:9092"

app = typer.Typer(
    name="producer",
    help="Publish image URIs to Kafka as image.v1 messages, create topics, redrive dead letters.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# -- shared options -----------------------------------------------------------------------------

Bootstrap = Annotated[
    str,
    typer.Option(
        "--bootstrap-servers", envvar="KAFKA_BOOTSTRAP_SERVERS", help="Kafka bootstrap servers."
    ),
]
KafkaConfig = Annotated[
    list[str] | None,
    typer.Option(
        "--kafka-config",
        metavar="NAME=VALUE",
        help="librdkafka setting, repeatable (e.g. security.protocol=SASL_SSL). Never printed.",
    ),
]
Topic = Annotated[str, typer.Option("--topic", "-t", help="Topic to publish to.")]
IdFromOpt = Annotated[
    str,
    typer.Option(
        "--id-from",
        help="Default id of a message: 'uri' (hash of the normalized URI) or 'content' "
        "(hash of the image bytes, read once here).",
    ),
]
MetadataOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--metadata", "-m", metavar="KEY=VALUE", help="Metadata for every message (repeatable)."
    ),
]
RateOpt = Annotated[
    float | None, typer.Option("--rate", help="Messages per second at most.", min=0.001)
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the messages; send nothing.")]
TimeoutOpt = Annotated[
    float,
    typer.Option(
        "--timeout-s", help="Deadline for each message's delivery report, in seconds.", min=0.1
    ),
]
CompressionOpt = Annotated[
    str, typer.Option("--compression", help=f"One of {', '.join(COMPRESSIONS)}.")
]
LingerOpt = Annotated[
    int, typer.Option("--linger-ms", help="Batching delay in milliseconds.", min=0)
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show the Kafka client's logs.")]


class _Output:
    """stderr output that plays well with a progress bar; plain text (no markup)."""

    def __init__(self) -> None:
        self.console = Console(stderr=True, highlight=False)
        self.progress: Progress | None = None

    @property
    def interactive(self) -> bool:
        return self.console.is_terminal

    def err(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(Text(text))
        else:
            typer.echo(text, err=True)


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} msg/s" if speed else "- msg/s")


@contextmanager
def _progress(out: _Output, description: str, total: int | None) -> Iterator[Progress | None]:
    """A progress bar with rate on a terminal; nothing otherwise."""
    if not out.interactive:
        yield None
        return
    columns: list[ProgressColumn | str] = [SpinnerColumn(), TextColumn("{task.description}")]
    if total is not None:
        columns.append(BarColumn())
    columns += [MofNCompleteColumn(), _RateColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=out.console, transient=True) as progress:
        progress.add_task(description, total=total)
        out.progress = progress
        try:
            yield progress
        finally:
            out.progress = None


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _setup_logging(verbose: bool) -> None:
    kafka_log = logging.getLogger("producer.kafka")
    kafka_log.propagate = False
    kafka_log.handlers[:] = []
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s kafka: %(message)s"))
        kafka_log.addHandler(handler)
        kafka_log.setLevel(logging.DEBUG)
    else:
        kafka_log.addHandler(logging.NullHandler())


def _metadata(pairs: list[str] | None) -> dict[str, Any] | None:
    if not pairs:
        return None
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(
                f"--metadata expects KEY=VALUE (key of 1-{METADATA_MAX_KEY_LENGTH} characters)"
            )
        out[key] = value
    return out


def _id_from(value: str) -> IdFrom:
    if value not in ("uri", "content"):
        raise InvalidInput("--id-from must be 'uri' or 'content'")
    return value  # type: ignore[return-value]


def _storage_options(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in parse_settings(pairs or [], "--storage-option").items():
        out[name] = {"true": True, "false": False}.get(value.lower(), value)
    return out


# -- publish / scan ---------------------------------------------------------------------------


def _publish_items(
    items: Iterable[Item],
    *,
    total: int | None,
    topic: str,
    bootstrap_servers: str,
    kafka_config: list[str] | None,
    rate: float | None,
    dry_run: bool,
    timeout_s: float,
    compression: str,
    linger_ms: int,
) -> None:
    out = _Output()
    invalid = 0
    sent = 0
    started = time.monotonic()
    if dry_run:
        for item in items:
            if item.message is None:
                invalid += 1
                out.err(f"invalid {item.where}: {item.error}")
                continue
            sys.stdout.write(encode_message(item.message).decode("utf-8") + "\n")
            sent += 1
        sys.stdout.flush()
        typer.echo(
            f"dry run: {sent} messages for {topic} (nothing sent); {invalid} invalid inputs",
            err=True,
        )
        if invalid:
            raise typer.Exit(1)
        return

    publisher = Publisher(
        bootstrap_servers,
        kafka_config=kafka_settings(kafka_config),
        compression=compression,
        linger_ms=linger_ms,
        delivery_timeout_s=timeout_s,
    )
    limiter = RateLimiter(rate, publisher)
    with _progress(out, f"publishing to {topic}", total) as bar:
        # the bar counts acknowledged (or failed) messages, so its rate is the delivery rate
        advance = None if bar is None else (lambda *_: bar.advance(bar.task_ids[0]))
        for item in items:
            if item.message is None:
                invalid += 1
                out.err(f"invalid {item.where}: {item.error}")
                if advance is not None:
                    advance()
                continue
            limiter.wait()
            ref = redact_uri(item.message.uri) if item.message.uri else item.message.id
            publisher.send_message(topic, item.message, ref=ref, on_delivery=advance)
            sent += 1
        if bar is not None and publisher.pending:
            bar.update(bar.task_ids[0], description=f"{topic}: waiting for delivery reports")
        result = publisher.wait(timeout_s + 5.0)
    seconds = time.monotonic() - started
    for failure in result.failed:
        out.err(_describe_failure(failure))
    per_s = result.delivered / seconds if seconds > 0 else 0.0
    summary = (
        f"published {result.delivered} of {sent} messages to {topic} in {seconds:.1f} s "
        f"({per_s:,.0f}/s); {len(result.failed)} not delivered; {invalid} invalid inputs"
    )
    typer.echo(summary, err=True)
    if result.failed and result.delivered == 0 and publisher.last_broker_error:
        raise _fail(
            f"nothing delivered: Kafka at {bootstrap_servers} unreachable or refusing "
            f"({publisher.last_broker_error})"
        )
    if result.failed:
        raise _fail(f"{len(result.failed)} messages not delivered to {topic} (listed above)")
    if invalid:
        raise _fail(f"{invalid} inputs were invalid and not sent (listed above)")


def _describe_failure(failure: Delivery) -> str:
    key = failure.key.decode("utf-8", "replace") if failure.key is not None else "-"
    return f"not delivered: key={key} {failure.ref}: {failure.error}"


def _input_items(
    uris: list[str], file: str | None, options: MessageOptions
) -> tuple[Iterator[Item], int | None]:
    """Items from arguments, ``--file`` and stdin (``-``), and their count when known."""
    sources: list[tuple[str, Iterable[str]]] = []
    total: int | None = 0
    args = [u for u in uris if u != "-"]
    if args:
        sources.append(("argument", args))
        total = len(args)
    if file is not None and file != "-":
        path = Path(file)
        if not path.is_file():
            raise InvalidInput(f"--file {file}: no such file")
        with path.open(encoding="utf-8") as f:
            total = (total or 0) + sum(
                1 for line in f if line.strip() and not line.lstrip().startswith("#")
            )
        sources.append((file, _lines_of(path)))
    if "-" in uris or file == "-":
        sources.append(("stdin", sys.stdin))
        total = None
    if not sources:
        raise InvalidInput("nothing to publish: give URIs, --file FILE, or - to read stdin")

    def items() -> Iterator[Item]:
        for name, lines in sources:
            yield from items_from_lines(lines, name, options)

    return items(), total


def _lines_of(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace") as f:
        yield from f


@app.command()
def publish(
    topic: Topic,
    uris: Annotated[
        list[str] | None,
        typer.Argument(
            help="Image URIs; '-' reads URIs or JSON messages from stdin.", show_default=False
        ),
    ] = None,
    file: Annotated[
        str | None,
        typer.Option(
            "--file", "-f", help="File of URIs or JSON image.v1 messages, one a line ('-': stdin)."
        ),
    ] = None,
    id_from: IdFromOpt = "uri",
    metadata: MetadataOpt = None,
    rate: RateOpt = None,
    dry_run: DryRunOpt = False,
    bootstrap_servers: Bootstrap = DEFAULT_BOOTSTRAP,
    kafka_config: KafkaConfig = None,
    timeout_s: TimeoutOpt = DEFAULT_TIMEOUT_S,
    compression: CompressionOpt = "zstd",
    linger_ms: LingerOpt = DEFAULT_LINGER_MS,
    verbose: VerboseOpt = False,
) -> None:
    """Publish image URIs (or JSON image.v1 messages) to TOPIC; the record key is the id."""
    _setup_logging(verbose)
    try:
        options = MessageOptions(_id_from(id_from), _metadata(metadata))
        items, total = _input_items(uris or [], file, options)
        _publish_items(
            items,
            total=total,
            topic=topic,
            bootstrap_servers=bootstrap_servers,
            kafka_config=kafka_config,
            rate=rate,
            dry_run=dry_run,
            timeout_s=timeout_s,
            compression=compression,
            linger_ms=linger_ms,
        )
    except ProducerError as exc:
        raise _fail(str(exc)) from None


@app.command("scan")
def scan_command(
    source: Annotated[
        str,
        typer.Argument(help="A directory, a file:// URI, or s3://bucket/prefix."),
    ],
    topic: Topic,
    id_from: IdFromOpt = "uri",
    metadata: MetadataOpt = None,
    storage_option: Annotated[
        list[str] | None,
        typer.Option(
            "--storage-option",
            metavar="NAME=VALUE",
            help="S3 setting, repeatable: endpoint_url, region, path_style, requester_pays "
            "(the consumer's --s3-* settings; e.g. endpoint_url=http://host:9000). Never printed.",
        ),
    ] = None,
    rate: RateOpt = None,
    dry_run: DryRunOpt = False,
    bootstrap_servers: Bootstrap = DEFAULT_BOOTSTRAP,
    kafka_config: KafkaConfig = None,
    timeout_s: TimeoutOpt = DEFAULT_TIMEOUT_S,
    compression: CompressionOpt = "zstd",
    linger_ms: LingerOpt = DEFAULT_LINGER_MS,
    verbose: VerboseOpt = False,
) -> None:
    """Publish a URI for every image under SOURCE (recursive, sorted)."""
    _setup_logging(verbose)
    try:
        storage = _storage_options(storage_option)
        options = MessageOptions(_id_from(id_from), _metadata(metadata), storage)
        entries = list(scan(source, storage))
        if not entries:
            typer.echo(f"no images found under {redact_uri(source)}", err=True)
        _publish_items(
            items_from_scan(entries, options),
            total=len(entries),
            topic=topic,
            bootstrap_servers=bootstrap_servers,
            kafka_config=kafka_config,
            rate=rate,
            dry_run=dry_run,
            timeout_s=timeout_s,
            compression=compression,
            linger_ms=linger_ms,
        )
    except ProducerError as exc:
        raise _fail(str(exc)) from None


# -- create-topic -------------------------------------------------------------------------------


@app.command("create-topic")
def create_topic(
    topic: Annotated[
        str, typer.Argument(help="Topic to create; its dead-letter topic is created too.")
    ],
    partitions: Annotated[
        int, typer.Option("--partitions", "-p", min=1, help="Partitions of the topic.")
    ] = 1,
    replication_factor: Annotated[
        int, typer.Option("--replication-factor", "-r", min=1, help="Replicas of each partition.")
    ] = 1,
    dlq_topic: Annotated[
        str | None,
        typer.Option("--dlq-topic", help="Dead-letter topic name [default: <topic>.dlq]."),
    ] = None,
    dlq_partitions: Annotated[
        int | None,
        typer.Option(
            "--dlq-partitions",
            min=1,
            help="Partitions of the dead-letter topic [default: as topic].",
        ),
    ] = None,
    dlq_retention_ms: Annotated[
        int,
        typer.Option("--dlq-retention-ms", help="Retention of dead letters in ms (-1: forever)."),
    ] = DEFAULT_DLQ_RETENTION_MS,
    bootstrap_servers: Bootstrap = DEFAULT_BOOTSTRAP,
    kafka_config: KafkaConfig = None,
    timeout_s: TimeoutOpt = DEFAULT_TIMEOUT_S,
    verbose: VerboseOpt = False,
) -> None:
    """Create TOPIC and its dead-letter topic; existing ones with the same partitions are fine."""
    _setup_logging(verbose)
    try:
        outcomes = create_topics(
            bootstrap_servers,
            topic,
            partitions=partitions,
            replication_factor=replication_factor,
            dlq_topic=dlq_topic,
            dlq_partitions=dlq_partitions,
            dlq_retention_ms=dlq_retention_ms,
            kafka_config=kafka_settings(kafka_config),
            timeout_s=timeout_s,
        )
    except ProducerError as exc:
        raise _fail(str(exc)) from None
    for outcome in outcomes:
        detail = f", {outcome.detail}" if outcome.detail else ""
        typer.echo(f"{outcome.action} {outcome.topic}: {outcome.partitions} partitions{detail}")


# -- redrive ------------------------------------------------------------------------------------


@contextmanager
def _stop_on_signals() -> Iterator[list[bool]]:
    """SIGINT/SIGTERM finish the current batch and stop; a second SIGINT aborts."""
    flag = [False]
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, _frame: FrameType | None) -> None:
        if flag[0] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag[0] = True

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@app.command()
def redrive(
    dlq_topic: Annotated[str, typer.Option("--dlq-topic", help="Dead-letter topic to read.")],
    topic: Annotated[str, typer.Option("--topic", "-t", help="Topic to re-publish to.")],
    where: Annotated[
        list[str] | None,
        typer.Option(
            "--where",
            metavar="HEADER=VALUE",
            help="Only records with this header value, e.g. error.type=not_found (repeatable: the "
            "same header ORs, different headers AND).",
        ),
    ] = None,
    max_redrives: Annotated[
        int,
        typer.Option("--max-redrives", min=0, help="Records redriven this often already stay put."),
    ] = DEFAULT_MAX_REDRIVES,
    group: Annotated[
        str | None,
        typer.Option(
            "--group",
            help="Consumer group on the dead-letter topic [default: from topic and filter].",
        ),
    ] = None,
    until_end: Annotated[
        bool,
        typer.Option("--until-end", help="Stop at the end offsets seen at start (else follow)."),
    ] = False,
    keep_timestamp: Annotated[
        bool,
        typer.Option(
            "--keep-timestamp/--new-timestamp",
            help="Re-publish with the dead letter's timestamp, so newer rows are never "
            "overwritten.",
        ),
    ] = True,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Count what would be redriven; send and commit nothing."),
    ] = False,
    bootstrap_servers: Bootstrap = DEFAULT_BOOTSTRAP,
    kafka_config: KafkaConfig = None,
    timeout_s: TimeoutOpt = DEFAULT_TIMEOUT_S,
    verbose: VerboseOpt = False,
) -> None:
    """Re-publish dead letters to TOPIC with their key and value; redrive.count goes up by one."""
    _setup_logging(verbose)
    out = _Output()
    started = time.monotonic()
    try:
        options = RedriveOptions(
            dlq_topic=dlq_topic,
            topic=topic,
            where=parse_where(where or []),
            max_redrives=max_redrives,
            group=group,
            until_end=until_end,
            keep_timestamp=keep_timestamp,
            dry_run=dry_run,
            timeout_s=timeout_s,
        )
        redriver = Redriver(bootstrap_servers, options, kafka_config=kafka_settings(kafka_config))
        with _stop_on_signals() as stopping, _progress(out, f"redriving {dlq_topic}", None) as bar:

            def progress(report: RedriveReport) -> None:
                if bar is not None:
                    bar.update(bar.task_ids[0], completed=report.seen, total=report.total)

            report = redriver.run(stop=lambda: stopping[0], progress=progress)
    except ProducerError as exc:
        raise _fail(str(exc)) from None
    for ref in report.exhausted:
        out.err(
            f"not redriven: {dlq_topic}[{ref.partition}]@{ref.offset} key={ref.key} "
            f"error.type={ref.error_type} redrive.count={ref.redrive_count} "
            f"reached --max-redrives {max_redrives}"
        )
    for ref, reason in report.failed:
        out.err(f"not delivered: {dlq_topic}[{ref.partition}]@{ref.offset} key={ref.key}: {reason}")
    verb = "would redrive" if dry_run else "redriven"
    typer.echo(
        f"{verb} {report.redriven}, skipped by filter {report.skipped}, "
        f"at the redrive limit {len(report.exhausted)}, failed {len(report.failed)} "
        f"({dlq_topic} -> {topic}, group {report.group}, {time.monotonic() - started:.1f} s)",
        err=True,
    )
    if report.failed:
        raise _fail(
            f"{len(report.failed)} dead letters not re-published; their offsets stay uncommitted"
        )


def main() -> None:
    app()
