"""The texts every format shares: a cell's text (mean ± std or interval, seeds, statuses) and the index columns
(the attributes that vary, then the row's label)."""

from __future__ import annotations

from sslbench.tables.leaves import leaf_digits
from sslbench.tables.model import Column, Row, Table

__all__ = ["cell_text", "index_columns"]


def cell_text(table: Table, row: Row, column: Column) -> str:
    """The text of one cell, without emphasis."""
    stat = table.cells.get((row, column))
    if stat is None:
        return ""
    if stat.status not in ("ok", "published"):
        if stat.status == "failed" and stat.seeds > 1:
            return f"failed ({stat.failed}/{stat.seeds})"
        return stat.status
    d = leaf_digits(column.leaf, table.digits)
    if stat.status == "published":
        return f"{stat.mean:.{max(d, _decimals(stat.mean))}f}"
    if stat.n == 0:
        text = "—"
    elif stat.ci is not None:
        text = f"{stat.mean:.{d}f} [{stat.ci[0]:.{d}f}, {stat.ci[1]:.{d}f}]"
    else:
        text = f"{stat.mean:.{d}f}" + (f" ± {stat.std:.{d}f}" if stat.n > 1 else "") + ("†" if stat.no_ci else "")
    if stat.n < stat.seeds:
        parts = [f"{stat.failed} failed"] if stat.failed else []
        parts += [f"{stat.missing} null"] if stat.missing else []
        text += f" ({stat.n}/{stat.seeds}; {', '.join(parts)})"
    elif table.uniform_n is None:
        text += f" (n={stat.n})"
    return text


def _decimals(value: float) -> int:
    """Decimals a published number was printed with (47.18 -> 2)."""
    text = f"{value:.6f}".rstrip("0")
    return len(text.split(".")[1]) if "." in text else 0


def index_columns(table: Table) -> list[tuple[str, dict[Row, str]]]:
    """The index columns of ``table``, by name: its varying attributes, then ``variant`` (the row labels)."""
    return [*table.attributes.items(), ("variant", {row: row.label for row in table.rows})]
