"""The consumer loop: poll, dispatch, backpressure, rebalance, commit, shutdown."""

from consumer.engine.exceptions import EngineFatalError
from consumer.engine.loop import Engine, RunOutcome, RunSummary

__all__ = ["Engine", "EngineFatalError", "RunOutcome", "RunSummary"]
