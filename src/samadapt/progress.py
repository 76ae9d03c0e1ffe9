"""Progress reporting handed from the CLI into library code (the library itself never prints).

A :data:`BarFactory` makes one progress bar per stage: ``(description, total)`` -> a context manager whose
value has ``update(n)`` (tqdm fits). :func:`no_bars` is the silent default; :func:`as_progress` adapts a
bar to the ``progress(done, total)`` callbacks of long library functions.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

BarFactory = Callable[[str, int | None], AbstractContextManager]


class _SilentBar:
    total: int | None = None

    def update(self, n: int = 1) -> None:
        pass


def no_bars(desc: str, total: int | None) -> AbstractContextManager:
    """A bar factory that shows nothing."""
    return nullcontext(_SilentBar())


def as_progress(bar) -> Callable[[int, int], None]:
    """Adapt ``bar`` (with ``update`` and optionally ``total``) to ``progress(done, total)`` callbacks."""
    state = {"done": 0}

    def progress(done: int, total: int) -> None:
        if hasattr(bar, "total") and bar.total != total:
            bar.total = total
        bar.update(done - state["done"])
        state["done"] = done

    return progress
