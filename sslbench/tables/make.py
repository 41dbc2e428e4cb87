"""Records to a rendered comparison in one call (:func:`make_table`)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from sslbench.tables.build import build_table
from sslbench.tables.formats import FORMATS, render

__all__ = ["make_table"]


def make_table(records: Iterable[dict[str, Any]], fmt: str = "md", metrics: Sequence[str] | None = None,
               digits: int = 1, *, layout: str = "columns", ci: bool = False, references: Sequence[str] = ()) -> str:
    """Render the comparison of ``records`` as ``md``, ``latex`` or ``csv`` (see :func:`build_table`)."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return render(build_table(records, metrics, layout=layout, ci=ci, references=references, digits=digits), fmt)

