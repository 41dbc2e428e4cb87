"""The table model: :class:`Table` holds rows (:class:`Row`: reference rows, variants, published rows), columns
(:class:`Column`: protocol metrics) and one :class:`Stat` per cell; it is what aggregation produces and what every
format renders."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["REFERENCE_ROWS", "Stat", "Row", "Column", "Table"]

#: The reference rows colorization protocols report under ``reference/<row>/<metric>``, in Zhang's order.
REFERENCE_ROWS = {"ground_truth": "ground truth", "gray": "gray"}


@dataclass
class Stat:
    """One cell: mean and std over the seeds that gave a number, how many did (``n``) out of how many ran
    (``seeds``, skipped ones excluded), how many failed and how many reported no number (``missing``), the status
    when there is no number to show, and the bootstrap interval when asked for."""

    mean: float | None = None
    std: float | None = None
    n: int = 0
    seeds: int = 0
    failed: int = 0
    missing: int = 0
    status: str = "ok"
    ci: tuple[float, float] | None = None
    #: Whether intervals were asked for and this cell could not get one.
    no_ci: bool = False
    source: str = ""


@dataclass(frozen=True)
class Row:
    """A row: ``kind`` is ``reference`` (gray, ground truth), ``variant`` or ``published``."""

    kind: str
    dataset: str
    encoder: str
    name: str
    #: For variant rows: 0 a scratch baseline, 2 the supervised bound, 1 a pretext (ranked).
    bound: int = 1

    @property
    def label(self) -> str:
        if self.kind == "reference":
            return f"{REFERENCE_ROWS.get(self.name, self.name)} (reference)"
        if self.kind == "published":
            return f"published: {self.name} ({self.encoder})"
        return self.name


@dataclass(frozen=True)
class Column:
    """A column: a protocol's metric (``metric`` empty for a protocol with only failed or skipped records)."""

    protocol: str
    metric: str

    @property
    def leaf(self) -> str:
        return self.metric.rsplit("/", 1)[-1]


@dataclass
class Table:
    """The aggregated comparison, ready to render."""

    rows: list[Row]
    columns: list[Column]
    cells: dict[tuple[Row, Column], Stat]
    #: 1 (best) or 2 (second best) for ranked cells.
    ranks: dict[tuple[Row, Column], int]
    #: Row attributes that vary (become index columns), by row.
    attributes: dict[str, dict[Row, str]]
    #: Attributes with one value for every row (go to the caption), in order.
    constants: dict[str, str]
    notes: list[str]
    warnings: list[str]
    digits: int = 1
    ci: bool = False
    #: The number of seeds of every numeric cell, when it is the same everywhere.
    uniform_n: int | None = None
    synthetic: bool = False

    def labels(self) -> dict[Column, tuple[str, str]]:
        """Short (group, sub) header of every column: the protocol, and the metric without ``layer/`` and without
        the leaf every column of the protocol shares (named in the group instead)."""
        out: dict[Column, tuple[str, str]] = {}
        for protocol in dict.fromkeys(c.protocol for c in self.columns):
            cols = [c for c in self.columns if c.protocol == protocol]
            parts = {c: [p for p in c.metric.split("/") if p] for c in cols}
            for c, p in parts.items():
                if p[:1] == ["layer"] and len(p) > 1:
                    parts[c] = p[1:]
                elif p[:1] == ["reference"] and len(p) > 2:
                    parts[c] = p[1:]
            leaves = {p[-1] for p in parts.values() if p}
            common = len(leaves) == 1 and len(cols) > 1 and all(len(p) > 1 for p in parts.values())
            group = f"{protocol} ({leaves.pop()})" if common else protocol
            for c, p in parts.items():
                out[c] = (group, " ".join(p[:-1] if common else p))
        return out

    def flat_labels(self) -> dict[Column, str]:
        return {c: f"{g} / {s}" if s else g for c, (g, s) in self.labels().items()}
