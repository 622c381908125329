"""Errors of the dev stack, named after what the caller should do: all of them are fatal."""

from __future__ import annotations

from pathlib import Path


class ServerError(Exception):
    """A server could not be started, or died, or never became ready: look at its log.

    The message names the server and its log file and quotes the log's last lines, so a failing
    ``make up`` or test says what went wrong without another step.
    """

    def __init__(self, server: str, reason: str, log_file: Path | None = None, log_tail: str = ""):
        self.server = server
        self.reason = reason
        self.log_file = log_file
        self.log_tail = log_tail
        message = f"{server}: {reason}"
        if log_file is not None:
            message += f" (log: {log_file})"
        if log_tail:
            message += f"\n--- last lines of {log_file} ---\n{log_tail}"
        super().__init__(message)


class FetchError(Exception):
    """Fetching the Kafka jars with Maven failed: fix the network or the toolchain, then rerun."""
