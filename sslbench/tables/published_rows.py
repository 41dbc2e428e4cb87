"""Published rows (:mod:`sslbench.published`): numbers from the papers, placed under the columns they correspond
to, with a note saying where they come from and what they mean."""

from __future__ import annotations

from typing import Sequence

from sslbench.errors import UsageError
from sslbench.tables.model import Column, Row, Stat, Table

__all__ = ["add_published_rows"]


def add_published_rows(table: Table, keys: Sequence[str]) -> None:
    """Append the rows of the published references ``keys`` (``--reference``) and their notes to ``table``."""
    from sslbench.published import get_reference

    for key in keys:
        try:
            ref = get_reference(key)
        except ValueError as exc:
            raise UsageError(f"--reference: {exc}") from None
        placed = {pc.name: Column(pc.protocol, pc.metric) for pc in ref.columns
                  if pc.protocol and Column(pc.protocol, pc.metric) in table.columns}
        mapping = "; ".join(f"{pc.name} = {pc.protocol} {pc.metric}" for pc in ref.columns if pc.protocol)
        explained = "; ".join(f"{pc.name} = {pc.protocol} {pc.metric}" + (f": {pc.note}" if pc.note else "")
                              for pc in ref.columns if pc.protocol)
        unmapped = "; ".join(f"{pc.name}: {pc.note}" for pc in ref.columns if not pc.protocol)
        head = f"published {key}: {ref.source}; {ref.setting}."
        if not placed:
            table.notes.append(f"{head} None of its columns corresponds to a column of this table ({mapping}); "
                               "no published row shown.")
            continue
        for prow in ref.rows:
            values = {name: v for name, v in prow.values.items() if name in placed}
            if not values:
                continue
            row = Row("published", "published", key, prow.method)
            table.rows.append(row)
            for name, by_row in table.attributes.items():
                by_row[row] = row.dataset if name == "dataset" else ""
            for name, value in values.items():
                table.cells[(row, placed[name])] = Stat(mean=value, n=1, seeds=1, status="published",
                                                        source=ref.source)
        text = f"{head} Columns: {explained}."
        if unmapped:
            text += f" Not shown (no corresponding sslbench metric): {unmapped}."
        text += "".join(f" {c}" for c in ref.caveats)
        table.notes.append(text)
