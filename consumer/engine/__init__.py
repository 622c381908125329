"""The consumer loop: poll, dispatch, backpressure, rebalance, commit, shutdown.

``Engine``, ``RunOutcome`` and ``RunSummary`` are imported on first use, so the light modules of
this package (``runtime``, ``events``, ``wiring``) can be imported without the whole engine (the
Milvus writer takes its clock from ``consumer.engine.runtime``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from consumer.engine.exceptions import EngineFatalError

if TYPE_CHECKING:
    from consumer.engine.loop import Engine, RunOutcome, RunSummary

__all__ = ["Engine", "EngineFatalError", "RunOutcome", "RunSummary"]


def __getattr__(name: str) -> Any:
    if name in ("Engine", "RunOutcome", "RunSummary"):
        from consumer.engine import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
