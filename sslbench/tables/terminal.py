"""A table on the terminal: a rich table when it fits the width, the Markdown otherwise."""

from __future__ import annotations

from typing import Any, Callable

from sslbench.tables.formats import markdown
from sslbench.tables.model import Table
from sslbench.tables.notes import caption
from sslbench.tables.text import cell_text, index_columns

__all__ = ["print_rich"]


def print_rich(table: Table, console: Any, fallback: Callable[[str], None] = print) -> None:
    """The table as a rich table on ``console`` when it fits the terminal's width; as Markdown (never truncated)
    when it does not."""
    from rich.measure import Measurement
    from rich.table import Table as RichTable
    from rich.text import Text

    index = index_columns(table)
    labels = table.flat_labels()
    rich = RichTable(title=caption(table), show_lines=False)
    for name, _ in index:
        rich.add_column(name, justify="left", no_wrap=True)
    for column in table.columns:
        rich.add_column(labels[column], justify="right", no_wrap=True)
    for i, row in enumerate(table.rows):
        names = [by_row[row] for _, by_row in index]
        cells = []
        for column in table.columns:
            style = {1: "bold", 2: "underline"}.get(table.ranks.get((row, column)), "")
            cells.append((cell_text(table, row, column), "italic" if row.kind == "published" else style))
        end_section = i + 1 < len(table.rows) and table.rows[i + 1].kind != row.kind
        rich.add_row(*[Text(n, style="italic" if row.kind == "published" else "") for n in names],
                     *[Text(t, style=s) for t, s in cells], end_section=end_section)
    natural = Measurement.get(console, console.options.update_width(10 ** 6), rich).maximum
    if natural > console.width:
        fallback(markdown(table))
        return
    console.print(rich)
    for note in table.notes:
        console.print(note, markup=False, highlight=False, soft_wrap=True)
