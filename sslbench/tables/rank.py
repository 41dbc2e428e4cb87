"""Best and second best per column (bold, underlined), ranked among the pretexts only: the scratch and supervised
rows are bounds, and published rows come from other data. Lower is better only for the leaves in
:data:`~sslbench.tables.leaves.LOWER_IS_BETTER`."""

from __future__ import annotations

from sslbench.tables.leaves import LOWER_IS_BETTER, leaf_digits
from sslbench.tables.model import Row, Table

__all__ = ["rank"]


def rank(table: Table) -> None:
    """Best (1) and second best (2) per column among the ranked variants of each (dataset, encoder), on the
    values as shown (rounded); nothing when there are fewer than two, or they all tie."""
    for column in table.columns:
        blocks: dict[tuple[str, str], list[tuple[float, Row]]] = {}
        for row in table.rows:
            stat = table.cells.get((row, column))
            if (row.kind != "variant" or row.bound != 1 or stat is None or stat.mean is None
                    or stat.status != "ok"):
                continue
            value = round(stat.mean, leaf_digits(column.leaf, table.digits))
            blocks.setdefault((row.dataset, row.encoder), []).append(
                (-value if column.leaf in LOWER_IS_BETTER else value, row))
        for candidates in blocks.values():
            levels = sorted({v for v, _ in candidates}, reverse=True)
            if len(candidates) < 2 or len(levels) < 2:
                continue
            for value, row in candidates:
                if value == levels[0]:
                    table.ranks[(row, column)] = 1
                elif len(candidates) >= 3 and len(levels) > 1 and value == levels[1]:
                    table.ranks[(row, column)] = 2
