"""Markdown (GitHub pipe) tables: the one writer of every table in samadapt's reports."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(header: Sequence[object], rows: Iterable[Sequence[object]]) -> list[str]:
    """The lines of a pipe table: the header, its ``---`` rule, one line per row.

    Cells are written as ``str(cell)``, a ``|`` in one escaped as ``\\|`` (a name stays in its column); an
    empty cell as ``| |``. Raises ``ValueError`` when a row has another number of cells than the header, which
    would shift its columns.
    """

    def line(cells: Sequence[object]) -> str:
        texts = [str(cell).replace("|", "\\|") for cell in cells]
        return "|" + "".join(f" {text} |" if text else " |" for text in texts)

    lines = [line(header), "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"table row {list(row)} has {len(row)} cells for {len(header)} columns")
        lines.append(line(row))
    return lines
