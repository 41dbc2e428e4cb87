"""The LaTeX of a table: a ``table`` float through pandas' Styler, booktabs rules, the notes below it."""

from __future__ import annotations

from sslbench.tables.model import Table
from sslbench.tables.notes import caption
from sslbench.tables.text import cell_text, index_columns

__all__ = ["LATEX_PACKAGES", "latex_escape", "latex_table"]

#: What ``\usepackage`` the LaTeX needs (named in its leading comment).
LATEX_PACKAGES = ("booktabs",)
_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
#: Unicode the tables print, as LaTeX that compiles with any input encoding.
_LATEX_UNICODE = {"±": r"$\pm$", "†": r"$^\dagger$", "—": "---", "×": r"$\times$"}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (``\\ & % $ # _ { } ~ ^``)."""
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)


def _latex_unicode(text: str) -> str:
    for char, repl in _LATEX_UNICODE.items():
        text = text.replace(char, repl)
    return text


def latex_table(table: Table, label: str = "tab:sslbench") -> str:
    """``table`` as a LaTeX ``table`` float (booktabs), its leading comment naming the packages it needs."""
    import pandas as pd

    index = index_columns(table)
    labels = table.labels()
    two_levels = any(sub for _, sub in labels.values())
    col_index = (pd.MultiIndex.from_tuples([labels[c] for c in table.columns]) if two_levels
                 else pd.Index([labels[c][0] for c in table.columns]))
    row_index = pd.MultiIndex.from_tuples([tuple(by_row[row] for _, by_row in index) for row in table.rows],
                                          names=[name for name, _ in index])
    body = [[cell_text(table, row, c) for c in table.columns] for row in table.rows]
    frame = pd.DataFrame(body, index=row_index, columns=col_index)
    styles = pd.DataFrame([[("itshape: ;" if row.kind == "published" and body[i][j] else
                             {1: "bfseries: ;", 2: "underline: --rwrap;"}.get(table.ranks.get((row, c)), ""))
                            for j, c in enumerate(table.columns)] for i, row in enumerate(table.rows)],
                          index=row_index, columns=col_index)
    published = [row.kind == "published" for row in table.rows]
    styler = (frame.style.format(escape="latex").format_index(escape="latex", axis=0)
              .format_index(escape="latex", axis=1).apply(lambda _: styles, axis=None))
    for level in range(len(index)):
        styler = styler.apply_index(lambda s: ["itshape: ;" if p else "" for p in published], axis=0, level=level)
    text = styler.to_latex(environment="table", hrules=True, caption=latex_escape(caption(table)), label=label,
                           position_float="centering", column_format="l" * len(index) + "r" * len(table.columns),
                           multicol_align="c", multirow_align="naive", siunitx=False)
    lines = text.splitlines()
    top = lines.index(r"\toprule")
    if two_levels:
        rules, start = [], len(index) + 1
        groups = [g for g, _ in (labels[c] for c in table.columns)]
        for group in dict.fromkeys(groups):
            width = groups.count(group)
            if width > 1:
                rules.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
            start += width
        if rules:
            lines.insert(top + 2, " ".join(rules))
    mid = lines.index(r"\midrule", top)
    rule_at = {i for i, row in enumerate(table.rows)
               if i and (row.kind != table.rows[i - 1].kind or (row.dataset, row.encoder)
                         != (table.rows[i - 1].dataset, table.rows[i - 1].encoder))}
    for i in sorted(rule_at, reverse=True):
        lines.insert(mid + 1 + i, r"\midrule")
    end = lines.index(r"\end{tabular}")
    notes = [latex_escape(note) for note in table.notes]
    lines[end + 1:end + 1] = [r"\par\smallskip", r"{\footnotesize\raggedright"] + [n + r"\par" for n in notes] + ["}"]
    packages = " ".join(r"\usepackage{" + p + "}" for p in LATEX_PACKAGES)
    head = [f"% sslbench table: needs {packages} in the preamble"]
    return "\n".join(head + [_latex_unicode(line) for line in lines])
