"""``python -m devstack up|down|status|fetch-kafka|fetch-minio``: the local servers."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from devstack.exceptions import FetchError, ServerError
from devstack.kafka import (
    KAFKA_LIBS_DIR,
    KAFKA_VERSION,
    check_java,
    fetch_kafka,
    java_major_version,
)
from devstack.minio import MINIO_VERSION, fetch_minio
from devstack.paths import REPO_ROOT, STACK_DIR
from devstack.stack import SERVER_NAMES, ServerStatus, Stack, StackConfig

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Start, check and stop the local Kafka, Milvus, Triton and MinIO servers.",
)

OnlyOption = Annotated[
    str | None,
    typer.Option(
        "--only", help=f"Comma-separated subset of: {', '.join(SERVER_NAMES)}.", show_default=False
    ),
]
BaseDirOption = Annotated[
    Path,
    typer.Option("--base-dir", help="Folder for data, logs and pid files.", hidden=True),
]


def _only(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in SERVER_NAMES]
    if unknown:
        raise typer.BadParameter(
            f"unknown server(s) {', '.join(unknown)}; choose from {', '.join(SERVER_NAMES)}",
            param_hint="--only",
        )
    return names


def _display(path: Path | None) -> Path | None:
    """Paths relative to the repository root when they are inside it."""
    if path is None:
        return None
    try:
        return path.relative_to(REPO_ROOT)
    except ValueError:
        return path


def _print(status: ServerStatus) -> None:
    shown = ServerStatus(
        status.name,
        status.state,
        status.address,
        status.pid,
        status.seconds,
        _display(status.log_file),
        "" if status.state == "failed" else status.detail,
    )
    typer.echo(shown.line(), err=status.state == "failed")
    if status.state == "failed":
        typer.echo(status.detail, err=True)


@app.command()
def up(only: OnlyOption = None, base_dir: BaseDirOption = STACK_DIR) -> None:
    """Start what is not running and wait until every server answers; reuse running ones."""
    stack = Stack(StackConfig(base_dir=base_dir))
    statuses = stack.up(_only(only), on_status=_print)
    failed = [s.name for s in statuses if s.state == "failed"]
    if failed:
        typer.echo(f"devstack up: failed: {', '.join(failed)}", err=True)
        raise typer.Exit(1)


@app.command()
def down(only: OnlyOption = None, base_dir: BaseDirOption = STACK_DIR) -> None:
    """Stop the servers `up` started (graceful, then SIGKILL after a bounded wait)."""
    stack = Stack(StackConfig(base_dir=base_dir))
    for status in stack.down(_only(only)):
        _print(status)


@app.command()
def status(only: OnlyOption = None, base_dir: BaseDirOption = STACK_DIR) -> None:
    """Show each server's state; exit code 3 when one is not running and ready."""
    stack = Stack(StackConfig(base_dir=base_dir))
    statuses = stack.status(_only(only))
    for s in statuses:
        _print(s)
    if any(s.state not in {"running", "external"} for s in statuses):
        raise typer.Exit(3)


@app.command("fetch-kafka")
def fetch_kafka_command(
    force: Annotated[bool, typer.Option("--force", help="Fetch even if already done.")] = False,
) -> None:
    """Fetch the pinned Apache Kafka jars from Maven Central (a no-op once done)."""
    started = time.monotonic()
    try:
        java = check_java()
        libs = fetch_kafka(KAFKA_LIBS_DIR, force=force)
    except (FetchError, ServerError) as exc:
        typer.echo(f"devstack fetch-kafka: {exc}", err=True)
        raise typer.Exit(1) from exc
    jars = len(list(libs.glob("*.jar")))
    typer.echo(
        f"kafka {KAFKA_VERSION}: {jars} jars in {_display(libs)} "
        f"({time.monotonic() - started:.1f} s; java {java_major_version(java)} at {java})"
    )


@app.command("fetch-minio")
def fetch_minio_command(
    force: Annotated[bool, typer.Option("--force", help="Build even if cached.")] = False,
) -> None:
    """Build the pinned MinIO (the S3 test server) with Go into the user's cache (once)."""
    started = time.monotonic()
    try:
        binary = fetch_minio(MINIO_VERSION, force=force)
    except FetchError as exc:
        typer.echo(f"devstack fetch-minio: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"minio {MINIO_VERSION}: {binary} ({time.monotonic() - started:.1f} s)")


@app.command("secure-kafka")
def secure_kafka_command(
    stop: Annotated[bool, typer.Option("--stop", help="Stop the secured broker.")] = False,
    oidc: Annotated[
        bool,
        typer.Option(
            "--oidc",
            help="Also serve an OIDC token endpoint (OAUTHBEARER) and stay in the foreground.",
        ),
    ] = False,
    port: Annotated[int, typer.Option("--port", help="SASL_SSL port; mTLS +2, BADHOST +3.")] = 9094,
    base_dir: BaseDirOption = STACK_DIR,
) -> None:
    """A secured Kafka next to the plain one: SASL_SSL, mTLS, ACLs (docs/operations.md)."""
    import secrets
    import signal

    from devstack.oidc import TokenServer
    from devstack.process import read_pid_file
    from devstack.securekafka import SecureKafkaServer, describe

    pid_file = base_dir / "run" / "kafka-secure.pid"
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    tokens = TokenServer({"embedder": f"client-{secrets.token_urlsafe(12)}"}) if oidc else None
    server = SecureKafkaServer(
        base_dir / "kafka-secure",
        base_dir / "logs" / "kafka-secure.log",
        port=port,
        controller_port=port + 1,
        mtls_port=port + 2,
        badhost_port=port + 3,
        internal_port=port + 4,
        jwks_url=tokens.jwks_url if tokens else None,
        oauth_issuer=tokens.issuer if tokens else None,
        pid_file=pid_file,
    )
    pid = read_pid_file(pid_file)
    running = pid is not None and server.attach(pid)
    if stop:
        if running:
            server.stop()
        typer.echo("kafka-secure stopped" if running else "kafka-secure not running")
        return
    if running and oidc:
        typer.echo("kafka-secure runs already without --oidc: stop it first (--stop)", err=True)
        raise typer.Exit(1)
    if not running:
        fetch_kafka(KAFKA_LIBS_DIR)
        try:
            server.start()
        except ServerError as exc:
            typer.echo(f"devstack secure-kafka: {exc}", err=True)
            raise typer.Exit(1) from exc
    for line in describe(server):
        typer.echo(line)
    if tokens is None:
        return
    tokens.start()
    secret_file = base_dir / "kafka-secure" / "oauth-client-secret"
    secret_file.touch(mode=0o600)
    secret_file.write_text(tokens.clients["embedder"])
    typer.echo(f"OIDC      {tokens.token_url} (client embedder, secret in {secret_file})")
    typer.echo("Ctrl-C stops the token endpoint and the broker")
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        tokens.stop()
        server.stop()


def main() -> None:
    app(prog_name="python -m devstack")


if __name__ == "__main__":
    sys.exit(main())
