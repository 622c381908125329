"""The producer's Kafka connection settings: the same as the consumer's.

Security settings come from the environment (``IMAGE_EMBEDDER_KAFKA_SECURITY_PROTOCOL``,
``..._SASL_MECHANISM``, ``..._SASL_USERNAME``, ``..._SASL_PASSWORD`` or
``..._SASL_PASSWORD_FILE``, ``..._SSL_CA_LOCATION``, ...), the folder
``IMAGE_EMBEDDER_SECRETS_DIR``, or the file ``IMAGE_EMBEDDER_CONFIG_FILE`` (TOML, JSON or YAML),
exactly as for ``python -m consumer``. ``--kafka-config NAME=VALUE`` flags come last, and never
carry a secret: a command line is visible to every user of the machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from producer.exceptions import InvalidInput
from producer.publisher import parse_settings


def kafka_settings(pairs: Sequence[str] | None) -> dict[str, Any]:
    """librdkafka settings of a producer command (without ``bootstrap.servers``, a flag)."""
    from pydantic import ValidationError

    from consumer.security import refuse_secret_flags
    from consumer.settings import Settings

    flags = parse_settings(list(pairs or []))
    try:
        refuse_secret_flags(flags)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    try:
        settings = Settings()
    except (ValidationError, ValueError, OSError) as exc:
        raise InvalidInput(
            f"invalid Kafka settings in the environment: {_first_line(exc)}"
        ) from None
    conf = settings.kafka_common()
    conf.pop("bootstrap.servers", None)
    conf.update(flags)
    return conf


def _first_line(exc: Exception) -> str:
    if hasattr(exc, "errors"):
        errors = exc.errors()  # a pydantic ValidationError: inputs are hidden
        if errors:
            first = errors[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            return f"{where}: {first.get('msg', '')}".strip(": ")
    return str(exc).splitlines()[0]
