"""One frozen settings object for the service.

Precedence: command-line flags > environment > optional config file (TOML, JSON or YAML) > defaults.
The connection variables ``KAFKA_BOOTSTRAP_SERVERS``, ``TRITON_URL`` and ``MILVUS_URI`` are read
as they are; every other setting is ``IMAGE_EMBEDDER_<NAME>``. Secrets are ``SecretStr`` so they
never show up in a repr, a log line or a metric.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from schemas import preprocessing as contract

ENV_PREFIX = "IMAGE_EMBEDDER_"


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Reads the file named by ``config_file`` (init value or env) as TOML, JSON or YAML."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._data = _read_config_file(path) if path else {}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def _read_config_file(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix in {".toml", ".tml"}:
        data = tomllib.loads(text)
    elif path.suffix in {".yaml", ".yml"}:
        import yaml  # optional: only needed for YAML config files

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of settings")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


class Settings(BaseSettings):
    """Everything the consumer needs; frozen once built."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="forbid",
        populate_by_name=True,
        case_sensitive=False,
        hide_input_in_errors=True,  # an error never echoes a value (it may be a secret)
    )

    config_file: Path | None = Field(default=None, description="TOML/JSON/YAML settings file")

    # --- Kafka -----------------------------------------------------------------------------
    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices(
            "bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS", f"{ENV_PREFIX}BOOTSTRAP_SERVERS"
        ),
    )
    topic: str | None = None
    group: str | None = None
    dlq_topic: str | None = Field(default=None, description="default: <topic>.dlq")
    kafka_config: dict[str, str] = Field(
        default_factory=dict,
        repr=False,  # may hold secrets; redacted() shows it safely
        description="raw librdkafka settings passed through",
    )
    kafka_security_protocol: str | None = None
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: str | None = None
    kafka_ssl_certificate_location: str | None = None
    kafka_ssl_key_location: str | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_oauth_client_secret: SecretStr | None = Field(
        default=None, description="sasl.oauthbearer.client.secret of the OIDC method"
    )
    kafka_oauth_cb: str | None = Field(
        default=None,
        description="module:function returning (token, expiry) for SASL/OAUTHBEARER (e.g. MSK IAM)",
    )
    auth_failure_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="how long an authentication or ACL failure during a run is retried",
    )
    batch_size: int = Field(default=32, ge=1, le=1024, description="messages per micro-batch")
    poll_timeout_s: float = Field(default=0.1, gt=0, le=5)
    commit_interval_s: float = Field(default=1.0, gt=0)
    session_timeout_ms: int = 45000
    max_poll_interval_ms: int = 300000

    # --- replay and bounds ------------------------------------------------------------------
    start_from: str | None = Field(
        default=None,
        validation_alias=AliasChoices("start_from", "from", f"{ENV_PREFIX}FROM"),
        description="earliest | latest | ISO-8601 time | partition:offset,...",
    )
    reset_offsets: bool = False
    rewrite_same_version: bool = Field(
        default=False,
        description="rewrite rows whose stored version equals the message's (never older ones)",
    )
    tombstone_retention_s: float | None = Field(
        default=None,
        gt=0,
        description="how long deletions are remembered (default: the topics' retention.ms)",
    )
    until_end: bool = False
    until: datetime | None = None
    backfill_worker: bool = Field(
        default=False,
        description="a worker of a planned backfill (backfill run): bounded by the group's plan",
    )
    max_rate: float | None = Field(default=None, gt=0, description="messages per second")

    # --- Triton -----------------------------------------------------------------------------
    triton_url: str = Field(
        default="grpc://127.0.0.1:8001",
        validation_alias=AliasChoices("triton_url", "TRITON_URL", f"{ENV_PREFIX}TRITON_URL"),
    )
    model: str = contract.MODEL_NAME
    model_version: str = ""
    output: str = contract.EMBEDDING_OUTPUT
    triton_timeout_s: float = Field(default=30.0, gt=0)
    triton_ssl_root_certificates: str | None = None
    triton_ssl_private_key: str | None = None
    triton_ssl_certificate_chain: str | None = None
    #: Requests in flight at Triton (one client each); 8 x 16 images keeps a queue at the server
    #: while answers are handed on, which 4 x 16 did not (docs/performance.md)
    infer_threads: int = Field(default=8, ge=1, le=64)
    infer_batch_size: int = Field(default=16, ge=1, le=contract.MAX_BATCH)

    # --- Milvus -----------------------------------------------------------------------------
    milvus_uri: str = Field(
        default="http://127.0.0.1:19530",
        validation_alias=AliasChoices("milvus_uri", "MILVUS_URI", f"{ENV_PREFIX}MILVUS_URI"),
    )
    milvus_token: SecretStr | None = None
    milvus_db: str | None = None
    milvus_server_pem_path: str | None = None
    collection: str | None = None
    write_batch_rows: int = Field(default=256, ge=1, le=10000)
    write_max_age_s: float = Field(default=0.2, ge=0)
    flush_interval_s: float | None = Field(default=None, gt=0, description="none: only at exit")
    milvus_timeout_s: float = Field(default=30.0, gt=0)
    near_duplicate_threshold: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="flag rows this cosine-similar to a stored original (none: off; 0.92 "
        "measured for the reference model, docs/near-duplicates.md)",
    )

    # --- fetch ------------------------------------------------------------------------------
    file_roots: tuple[Path, ...] = Field(
        default=(),
        validation_alias=AliasChoices("file_roots", "file_root", f"{ENV_PREFIX}FILE_ROOTS"),
    )
    allowed_schemes: tuple[str, ...] = ("http", "https", "file", "s3")
    allow_private_networks: bool = False
    allowed_networks: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    follow_redirects: bool = False
    max_download_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(default=40_000_000, ge=1)
    fetch_connect_timeout_s: float = Field(default=5.0, gt=0)
    fetch_read_timeout_s: float = Field(default=15.0, gt=0)
    fetch_total_timeout_s: float = Field(default=30.0, gt=0)
    fetch_retries: int = Field(default=2, ge=0, le=10)
    io_threads: int = Field(default=8, ge=1, le=128)

    # --- s3:// objects: credentials come from the AWS chain, never from a message -----------
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, Ceph, R2); else AWS_ENDPOINT_URL"
    )
    s3_region: str | None = Field(default=None, description="default: the AWS chain's region")
    s3_path_style: bool = Field(default=False, description="path-style addressing (dotted buckets)")
    s3_requester_pays: bool = False
    allowed_buckets: tuple[str, ...] = Field(
        default=(),
        validation_alias=AliasChoices(
            "allowed_buckets", "allowed_bucket", f"{ENV_PREFIX}ALLOWED_BUCKETS"
        ),
        description="buckets s3:// URIs may name; empty: every bucket the credentials can read",
    )
    #: Niceness added to the I/O threads (Linux; 0 = as the rest). Decoding has a buffer of
    #: rows in flight; the main thread's dispatch and the inference threads do not, and on a
    #: busy core they keep the model fed only if they win the CPU when they are runnable.
    io_nice: int = Field(default=10, ge=0, le=19)
    #: The C library's malloc arenas (glibc; 0 = its default of 8 per core). Each thread that
    #: allocates under contention gets an arena of its own, and each keeps the memory freed in
    #: it: the I/O threads' decoded images stay resident in up to 16 arenas on 2 cores, 128 on
    #: 16. Two measured 740 -> 626 MiB peak on the 50 000 backlog, the rate unchanged.
    malloc_arenas: int = Field(default=2, ge=0, le=1024)

    # --- engine -----------------------------------------------------------------------------
    max_rows_in_flight: int = Field(default=256, ge=1)
    resume_fraction: float = Field(default=0.5, gt=0, lt=1)
    drain_timeout_s: float = Field(default=30.0, gt=0)
    dead_letter_refused_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="how long a dead letter the topic refuses (non-retriable) is retried",
    )
    canvas_px: int = Field(default=512, ge=contract.RESIZE_SHORTER_PX)
    #: Compiled batch shapes of the JAX step; a micro-batch runs in chunks of the largest.
    #: Small chunks measured about 35% cheaper per image than 8-32 on one CPU core.
    preprocess_buckets: tuple[int, ...] = (1, 2, 4)
    #: the user's cache (``$XDG_CACHE_HOME/image-embedder/jax``), whatever the working directory
    compilation_cache_dir: Path | None = Field(default_factory=lambda: _user_cache_dir() / "jax")

    # --- operations -------------------------------------------------------------------------
    metrics_port: int | None = Field(default=9108, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"
    summary_json: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init = init_settings()
        env = env_settings()
        path = init.get("config_file") or env.get("config_file")
        file_source = _ConfigFileSource(settings_cls, Path(path) if path else None)
        from consumer.security import SecretFileSource  # *_FILE and the secrets directory

        return (init_settings, env_settings, SecretFileSource(settings_cls), file_source)

    @field_validator("triton_url")
    @classmethod
    def _check_triton_url(cls, value: str) -> str:
        parts = urlsplit(value if "://" in value else f"grpc://{value}")
        if (
            parts.scheme not in {"grpc", "grpcs", "http", "https"}
            or not parts.hostname
            or not parts.port
        ):
            raise ValueError(
                "triton_url must look like grpc://host:port, grpcs://host:port (TLS), "
                "http://host:port or https://host:port"
            )
        return f"{parts.scheme}://{parts.hostname}:{parts.port}"

    @field_validator("allowed_schemes", "allowed_buckets", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(v.strip().lower() for v in value.split(",") if v.strip())
        return value

    @field_validator("allowed_buckets")
    @classmethod
    def _check_buckets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for bucket in value:
            if not _BUCKET_RE.fullmatch(bucket):
                raise ValueError(f"allowed bucket {bucket!r} is not a valid S3 bucket name")
        return value

    @field_validator("s3_endpoint_url")
    @classmethod
    def _check_s3_endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("s3_endpoint_url must look like https://host[:port]")
        if parts.username or parts.password or parts.query:
            raise ValueError("s3_endpoint_url may not carry credentials or a query")
        return value.strip()

    @field_validator("kafka_config", mode="before")
    @classmethod
    def _parse_kafka_config(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value)
        if isinstance(value, list | tuple):  # ["k=v", ...] from the command line
            from consumer.security import refuse_secret_flags

            out = {}
            for item in value:
                key, sep, val = str(item).partition("=")
                if not sep:
                    raise ValueError(f"kafka config entry {key.strip()!r} is not key=value")
                out[key.strip()] = val.strip()
            refuse_secret_flags(out)
            return out
        return value

    @model_validator(mode="after")
    def _check_bounds(self) -> Settings:
        if self.until_end and self.until is not None:
            raise ValueError("give either --until-end or --until, not both")
        if self.start_from is not None:
            parse_start(self.start_from)
        return self

    # --- derived values ---------------------------------------------------------------------
    @property
    def triton_protocol(self) -> Literal["grpc", "http"]:
        return "http" if urlsplit(self.triton_url).scheme in {"http", "https"} else "grpc"

    @property
    def triton_address(self) -> str:
        parts = urlsplit(self.triton_url)
        return f"{parts.hostname}:{parts.port}"

    @property
    def dead_letter_topic(self) -> str:
        if self.dlq_topic:
            return self.dlq_topic
        if not self.topic:
            raise ValueError("a topic is needed to name the dead-letter topic")
        return f"{self.topic}.dlq"

    def kafka_common(self) -> dict[str, Any]:
        """librdkafka settings shared by the consumer, the dead-letter producer and admin."""
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers}
        named = {
            "security.protocol": self.kafka_security_protocol,
            "sasl.mechanism": self.kafka_sasl_mechanism,
            "sasl.username": self.kafka_sasl_username,
            "sasl.password": _reveal(self.kafka_sasl_password),
            "ssl.ca.location": self.kafka_ssl_ca_location,
            "ssl.certificate.location": self.kafka_ssl_certificate_location,
            "ssl.key.location": self.kafka_ssl_key_location,
            "ssl.key.password": _reveal(self.kafka_ssl_key_password),
            "sasl.oauthbearer.client.secret": _reveal(self.kafka_oauth_client_secret),
        }
        conf.update({k: v for k, v in named.items() if v is not None})
        conf.update(self.kafka_config)
        if self.kafka_oauth_cb:
            from consumer.security import load_oauth_cb

            conf["oauth_cb"] = load_oauth_cb(self.kafka_oauth_cb)
        return conf

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict safe to log: secrets and secret-looking keys hidden."""
        data = self.model_dump(mode="json")
        for key in list(data):
            if isinstance(getattr(self, key, None), SecretStr):
                data[key] = "**********" if getattr(self, key) is not None else None
        data["kafka_config"] = {
            k: ("**********" if _SECRET_KEY.search(k) else v) for k, v in self.kafka_config.items()
        }
        return data


_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SECRET_KEY = re.compile(r"password|secret|token|key|credential|sasl\.oauthbearer", re.I)


def _reveal(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


# --- --from parsing -------------------------------------------------------------------------
StartPosition = Literal["earliest", "latest"] | datetime | dict[int, int]


def _user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "image-embedder"


def parse_start(value: str) -> StartPosition:
    """Parse ``--from``: earliest, latest, an ISO-8601 time, or ``partition:offset,...``."""
    text = value.strip()
    if text == "earliest":
        return "earliest"
    if text == "latest":
        return "latest"
    if re.fullmatch(r"\d+:\d+(,\d+:\d+)*", text):
        out: dict[int, int] = {}
        for pair in text.split(","):
            part, off = pair.split(":")
            out[int(part)] = int(off)
        return out
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(
            f"--from {value!r}: expected earliest, latest, an ISO-8601 time or partition:offset,..."
        ) from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)
