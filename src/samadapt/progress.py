"""Progress reporting handed from the CLI into library code (the library itself never prints).

Long library functions report through one callback signature, :data:`Progress`: ``progress(done, total)``.
A :data:`BarFactory` makes one progress bar per stage: ``(description, total)`` -> a context manager whose
value has ``update(n)`` (tqdm fits). :func:`no_bars` is the silent default; :func:`as_progress` adapts a
bar to a :data:`Progress` callback; :func:`bar_on_demand` opens the
bar only when such a function reports work, so a phase with nothing to do (a finished embedding cache)
shows no bar at all.

Every phase of a command that can take more than a couple of seconds gets its own bar (``total=None`` for a
phase without countable parts, e.g. writing a report: a status line), so no bar sits at 100% while unseen
work goes on. Under ``torchrun`` only rank 0 shows bars.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext

BarFactory = Callable[[str, int | None], AbstractContextManager]

Progress = Callable[[int, int], None]
"""``progress(done, total)``: ``done`` of ``total`` units (slices, cases) are finished; called as work finishes,
``done`` never decreasing (work read back from an earlier run counts at once). The library's one progress
callback signature."""


class _SilentBar:
    total: int | None = None

    def update(self, n: int = 1) -> None:
        pass


def no_bars(desc: str, total: int | None) -> AbstractContextManager:
    """A bar factory that shows nothing."""
    return nullcontext(_SilentBar())


def as_progress(bar) -> Progress:
    """Adapt ``bar`` (with ``update`` and optionally ``total``) to ``progress(done, total)`` callbacks."""
    state = {"done": 0}

    def progress(done: int, total: int) -> None:
        if hasattr(bar, "total") and bar.total != total:
            bar.total = total
        bar.update(done - state["done"])
        state["done"] = done

    return progress


@contextmanager
def bar_on_demand(bars: BarFactory, desc: str) -> Iterator[Progress]:
    """A ``progress(done, total)`` callback whose bar ``bars(desc, total)`` opens at the first call and
    closes when the ``with`` block ends; never called, it shows nothing."""
    with ExitStack() as stack:
        opened: list[Progress] = []

        def progress(done: int, total: int) -> None:
            if not opened:
                opened.append(as_progress(stack.enter_context(bars(desc, total))))
            opened[0](done, total)

        yield progress

