"""Comparison tables from run records: Markdown, LaTeX, CSV and the terminal.

:func:`build_table` aggregates records into a :class:`Table` (rows: variants, columns: protocol metrics, cells:
:class:`Stat` over seeds); :func:`render` writes it in a format; :func:`make_table` does both.

The data flows one way, one module a step:

- :mod:`~sslbench.tables.runs`: records to runs, grouped by seed (mixed configs and duplicate seeds refused, with
  warnings);
- :mod:`~sslbench.tables.cells`: a group's runs to a cell (mean ± std, seeds counted, failures and nulls shown);
  :mod:`~sslbench.tables.intervals`: bootstrap intervals of the cells;
- :mod:`~sslbench.tables.layout`: which rows and columns, in what order; :mod:`~sslbench.tables.rank`: best and
  second best; :mod:`~sslbench.tables.published_rows`: numbers from the papers;
- :mod:`~sslbench.tables.notes`: caption and notes; :mod:`~sslbench.tables.build`: all of the above, in order;
- :mod:`~sslbench.tables.text`, :mod:`~sslbench.tables.formats`, :mod:`~sslbench.tables.latex`,
  :mod:`~sslbench.tables.terminal`: the table as text; :mod:`~sslbench.tables.make`: records to text in one call.

:mod:`~sslbench.tables.model` holds the dataclasses, :mod:`~sslbench.tables.leaves` what a metric's name says
about it (default visibility, unit, direction, decimals).
"""

from __future__ import annotations

from sslbench.tables.build import LAYOUTS, build_table
from sslbench.tables.formats import FORMATS, render
from sslbench.tables.latex import LATEX_PACKAGES, latex_escape
from sslbench.tables.leaves import LOWER_IS_BETTER
from sslbench.tables.make import make_table
from sslbench.tables.model import Column, Row, Stat, Table
from sslbench.tables.notes import SYNTHETIC_NOTE
from sslbench.tables.terminal import print_rich
from sslbench.tables.text import cell_text

__all__ = ["FORMATS", "LAYOUTS", "LOWER_IS_BETTER", "SYNTHETIC_NOTE", "LATEX_PACKAGES", "Stat", "Row", "Column",
           "Table", "build_table", "render", "make_table", "cell_text", "print_rich",
           "latex_escape"]
