"""Errors of the benchmark harness. Every one is fatal: the run stops and says why."""

from __future__ import annotations


class BenchFatalError(RuntimeError):
    """The benchmark cannot go on (bad options, a server or a consumer run failed)."""


class ConsumerRunFailedError(BenchFatalError):
    """A consumer process exited early or did not finish its work in time; carries its log tail."""
