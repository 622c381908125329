"""How a run ended and what it did: the CLI picks its exit status from the outcome and prints the
summary (``--summary-json`` writes it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum

import orjson


class RunOutcome(StrEnum):
    """How a run ended; the CLI picks its exit status from it."""

    FINISHED = "finished"  # a bounded run reached its end offsets
    STOPPED = "stopped"  # an unbounded run stopped by a signal (drained and committed)
    STOPPED_EARLY = "stopped_early"  # a bounded run stopped before its end: run it again
    ABORTED = "aborted"  # a second SIGINT: stopped at once, nothing more committed


@dataclass
class RunSummary:
    """Counts per outcome for one run; printed at the end and written with --summary-json."""

    ingested: int = 0
    deleted: int = 0
    dead_lettered: int = 0
    skipped_stale: int = 0
    superseded: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0  # connecting, checking the model, compiling, joining the group
    images_per_second: float = 0.0  # ingested rows per second from the first message on
    #: From the first message polled to the last one done (written, deleted, skipped or
    #: dead-lettered): the run's working time, without start-up and without the wait at its end
    busy_seconds: float = 0.0
    dead_letters_by_type: dict[str, int] = field(default_factory=dict)
    committed: dict[str, int] = field(default_factory=dict)
    outcome: RunOutcome = RunOutcome.STOPPED

    def set_times(
        self, *, started: float, first_message: float | None, last_done: float | None, ended: float
    ) -> None:
        """The run's times from its clock's readings: the run's start, the first message polled
        and the last one done (None when there was none) and the run's end."""
        first = first_message if first_message is not None else ended
        self.seconds = round(ended - started, 3)
        self.startup_seconds = round(first - started, 3)
        self.busy_seconds = round(max(0.0, (last_done or first) - first), 3)
        since_first = ended - first
        self.images_per_second = round(self.ingested / since_first, 2) if since_first > 0 else 0.0

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

    def done(self) -> int:
        return (
            self.ingested + self.deleted + self.dead_lettered + self.skipped_stale + self.superseded
        )
