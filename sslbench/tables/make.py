"""Records to a rendered comparison in one call: text in a format (:func:`make_table`), or a DataFrame of cell
texts for other renderers (:func:`comparison_frame`)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from sslbench.tables.build import build_table
from sslbench.tables.formats import FORMATS, render
from sslbench.tables.text import cell_text

__all__ = ["make_table", "comparison_frame"]


def make_table(records: Iterable[dict[str, Any]], fmt: str = "md", metrics: Sequence[str] | None = None,
               digits: int = 1, *, layout: str = "columns", ci: bool = False, references: Sequence[str] = ()) -> str:
    """Render the comparison of ``records`` as ``md``, ``latex`` or ``csv`` (see :func:`build_table`)."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return render(build_table(records, metrics, layout=layout, ci=ci, references=references, digits=digits), fmt)


def comparison_frame(records: Iterable[dict[str, Any]], metrics: Sequence[str] | None = None, digits: int = 1
                     ) -> tuple[Any, bool]:
    """The comparison as a pandas DataFrame of texts (dataset, encoder, variant, then one column per protocol
    metric, constant columns kept) and whether any record comes from synthetic data: for other renderers (HTML)."""
    import pandas as pd

    table = build_table(records, metrics, digits=digits)
    labels = table.flat_labels()
    body = [[row.dataset, row.encoder, row.label] + [cell_text(table, row, c) for c in table.columns]
            for row in table.rows]
    frame = pd.DataFrame(body, columns=["dataset", "encoder", "variant"] + [labels[c] for c in table.columns])
    return frame, table.synthetic
