"""A table as text: Markdown (a pipe table, then caption and notes), LaTeX (:mod:`sslbench.tables.latex`) or
tidy CSV (one line per cell)."""

from __future__ import annotations

from sslbench.tables.latex import latex_table
from sslbench.tables.model import REFERENCE_ROWS, Table
from sslbench.tables.notes import caption
from sslbench.tables.text import cell_text, index_columns

__all__ = ["FORMATS", "render", "markdown"]

FORMATS = ("md", "latex", "csv")


def _md_escape(text: str) -> str:
    return text.replace("|", r"\|")


def markdown(table: Table) -> str:
    """``table`` as a Markdown pipe table (best bold, second best underlined, published rows italic), then its
    caption and notes."""
    index = index_columns(table)
    labels = table.flat_labels()
    header = [name for name, _ in index] + [labels[c] for c in table.columns]
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
             "|" + "|".join(["---"] * len(index) + ["---:"] * len(table.columns)) + "|"]
    for row in table.rows:
        names = [_md_escape(by_row[row]) for _, by_row in index]
        if row.kind == "published":
            names = [f"*{n}*" if n else n for n in names]
        cells = []
        for column in table.columns:
            text = _md_escape(cell_text(table, row, column))
            rank = table.ranks.get((row, column))
            if text and row.kind == "published":
                text = f"*{text}*"
            elif rank == 1:
                text = f"**{text}**"
            elif rank == 2:
                text = f"<u>{text}</u>"
            cells.append(text)
        lines.append("| " + " | ".join(names + cells) + " |")
    lines += ["", caption(table), ""]
    lines += [f"- {note}" for note in table.notes]
    return "\n".join(lines)


def _csv(table: Table) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "encoder", "variant", "protocol", "metric", "mean", "std", "n", "seeds", "failed",
                     "null", "status", "ci_low", "ci_high", "row", "source"])

    def number(x: float | None) -> str:
        return "" if x is None else format(float(x), ".12g")

    for row in table.rows:
        for column in table.columns:
            stat = table.cells.get((row, column))
            if stat is None:
                continue
            metric = f"reference/{row.name}/{column.metric}" if row.kind == "reference" else column.metric
            name = row.name if row.kind != "reference" else REFERENCE_ROWS.get(row.name, row.name)
            writer.writerow([row.dataset, row.encoder, name, column.protocol, metric, number(stat.mean),
                             number(stat.std if stat.n > 1 else None), stat.n, stat.seeds, stat.failed, stat.missing,
                             stat.status, number(stat.ci[0] if stat.ci else None),
                             number(stat.ci[1] if stat.ci else None), row.kind, stat.source])
    return buffer.getvalue()


def render(table: Table, fmt: str = "md") -> str:
    """``table`` as Markdown, LaTeX (a ``table`` float through pandas' Styler, booktabs) or tidy CSV."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return _csv(table)
    if not table.rows:
        return "(no records)"
    return latex_table(table) if fmt == "latex" else markdown(table)
