"""Known-bad variants of the engine, applied as monkeypatches: the simulation must find each."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

VARIANTS: dict[str, Callable[[], Callable[[], None]]] = {}


@contextlib.contextmanager
def applied(name: str | None) -> Iterator[None]:
    if name is None:
        yield
        return
    undo = VARIANTS[name]()
    try:
        yield
    finally:
        undo()
