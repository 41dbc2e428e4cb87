"""A self-contained static HTML report of run records: the comparison table, the figures and every record's config.

The page loads nothing: figures are PNG data URIs, the style sheet and a small script are inline, and a
Content-Security-Policy (``default-src 'none'``; images only from ``data:``; the style and script allowed by hash)
makes a browser refuse any fetch the page might still try. Every text taken from records is HTML-escaped.

The script only reports, after load, how many images the page holds, how many decoded to a nonzero size and how many
resources were fetched (``data-images``, ``data-images-loaded``, ``data-fetched`` on ``<body>``), so a headless browser
can check the rendered page.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any, Iterable

__all__ = ["EmbeddedFigure", "build_report", "markdown_table_html", "report_figures", "write_report"]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #1d2433;
       background: #ffffff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #3b6ea5; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #555f70; }
table.comparison { border-collapse: collapse; font-size: 0.9em; display: block; overflow-x: auto; }
table.comparison th, table.comparison td { border: 1px solid #c9d1de; padding: 0.3em 0.6em; white-space: nowrap; }
table.comparison th { background: #3b6ea5; color: #ffffff; }
table.comparison tbody tr:nth-child(even) { background: #eef3fa; }
table.comparison td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #c9d1de; }
figcaption { color: #555f70; font-size: 0.9em; }
details { border: 1px solid #c9d1de; border-radius: 4px; margin: 0.3em 0; padding: 0.3em 0.6em; }
details[open] { background: #f7f9fc; }
summary { cursor: pointer; }
pre { background: #ffffff; border: 1px solid #dde3ec; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
.status-ok { color: #1e7b34; font-weight: bold; }
.status-failed { color: #b3261e; font-weight: bold; }
.status-skipped { color: #8a6d00; font-weight: bold; }
.problems li { color: #b3261e; }
ul.notes { color: #555f70; }
code { background: #eef3fa; padding: 0 0.2em; }
"""

SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (image) { return image.complete && image.naturalWidth > 0; });
  document.body.setAttribute("data-images", String(images.length));
  document.body.setAttribute("data-images-loaded", String(loaded.length));
  document.body.setAttribute("data-fetched", String(performance.getEntriesByType("resource").length));
});
"""


@dataclass
class EmbeddedFigure:
    """One embedded figure: its caption and PNG bytes."""

    caption: str
    png: bytes


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _json(value: Any) -> str:
    return escape(json.dumps(value, indent=2, sort_keys=False, default=str, ensure_ascii=False))


def _split_row(line: str) -> list[str]:
    return [cell.strip().replace(r"\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _inline(text: str) -> str:
    """Escaped ``text`` with the Markdown the tables print as HTML: ``**best**``, ``<u>second</u>``, ``*italic*``,
    `` `code` ``."""
    text = escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"&lt;u&gt;(.+?)&lt;/u&gt;", r"<u>\1</u>", text)
    text = re.sub(r"(?<![*\w])\*(?!\s)(.+?)(?<!\s)\*(?![*\w])", r"<em>\1</em>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def markdown_table_html(markdown: str) -> str:
    """The Markdown that :func:`sslbench.tables.make_table` prints (a pipe table, then caption and notes) as HTML:
    a ``<table>`` (columns aligned as the rule line says), paragraphs, and a list for ``- `` lines."""
    lines = markdown.splitlines()
    table = [line for line in lines if line.lstrip().startswith("|")]
    rest = [line for line in lines if line.strip() and not line.lstrip().startswith("|")]
    parts = []
    if len(table) >= 2:
        header, rule, body = _split_row(table[0]), _split_row(table[1]), table[2:]
        right = [cell.endswith(":") for cell in rule]

        def cells(row: list[str], tag: str) -> str:
            return "".join(f'<{tag} class="num">{_inline(c)}</{tag}>' if i < len(right) and right[i]
                           else f"<{tag}>{_inline(c)}</{tag}>" for i, c in enumerate(row))

        rows = "".join(f"<tr>{cells(_split_row(line), 'td')}</tr>" for line in body)
        parts.append(f'<table class="comparison" id="comparison"><thead><tr>{cells(header, "th")}</tr></thead>'
                     f"<tbody>{rows}</tbody></table>")
    notes = [line.strip()[2:] for line in rest if line.strip().startswith("- ")]
    parts += [f'<p class="meta">{_inline(line.strip())}</p>' for line in rest if not line.strip().startswith("- ")]
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{_inline(n)}</li>" for n in notes) + "</ul>")
    return "".join(parts)


def _table(records: list[dict[str, Any]]) -> str:
    from sslbench.tables import make_table

    if not records:
        return "<p>No records.</p>"
    return markdown_table_html(make_table(records, "md"))


def _figure(figure: EmbeddedFigure) -> str:
    data = base64.b64encode(figure.png).decode()
    caption = escape(figure.caption)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _record(record: dict[str, Any]) -> str:
    from sslbench.plots import variant_of

    status = str(record.get("status", "ok"))
    options = record.get("variant_options") or {}
    title = (f"{escape(variant_of(record))} × {escape(str(record.get('protocol')))} · seed "
             f"{escape(str(record.get('seed')))} · <span class=\"status-{escape(status)}\">{escape(status)}</span>")
    if options:
        title += f" · {escape(json.dumps(options, default=str))}"
    parts = [f"<summary>{title}</summary>"]
    if record.get("reason"):
        parts.append(f"<p><b>reason:</b> {escape(str(record['reason']))}</p>")
    if record.get("_path"):
        parts.append(f'<p class="meta">{escape(str(record["_path"]))}</p>')
    for heading, key in (("config", "config"), ("environment", "env"), ("metrics", "metrics")):
        parts.append(f"<h4>{heading}</h4><pre>{_json(record.get(key))}</pre>")
    return f'<details class="record">{"".join(parts)}</details>'


def _records(records: list[dict[str, Any]]) -> str:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((str(record.get("dataset")), str(record.get("encoder"))), []).append(record)
    return "".join(f"<h3>{escape(dataset)} · {escape(encoder)}</h3>" + "".join(_record(r) for r in members)
                   for (dataset, encoder), members in groups.items())


def build_report(records: list[dict[str, Any]], figures: Iterable[EmbeddedFigure] = (),
                 problems: Iterable[str] = (), *, title: str = "sslbench report", source: str = "",
                 notes: Iterable[str] = ()) -> str:
    """The report page as one HTML string."""
    statuses = [str(r.get("status", "ok")) for r in records]
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses)) or "none"
    commits = sorted({str((r.get("env") or {}).get("git_commit")) for r in records})
    figures_html = "".join(_figure(f) for f in figures)
    figures_html += "".join(f'<p class="meta">{escape(note)}</p>' for note in notes)
    problems = list(problems)
    problems_html = ("<h2>Problems reading the records</h2><ul class=\"problems\">"
                     + "".join(f"<li>{escape(p)}</li>" for p in problems) + "</ul>") if problems else ""
    csp = (f"default-src 'none'; img-src data:; style-src {_csp_hash(STYLE)}; script-src {_csp_hash(SCRIPT)}; "
           "base-uri 'none'; form-action 'none'")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{escape(csp)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{STYLE}</style>
<script>{SCRIPT}</script>
</head>
<body>
<h1>{escape(title)}</h1>
<p class="meta">{len(records)} records ({escape(counts)}) from {escape(source)}; generated
{escape(time.strftime("%Y-%m-%d %H:%M:%S %z"))}; harness commits: {escape(", ".join(commits) or "unknown")}</p>
<h2>Comparison</h2>
{_table(records)}
<h2>Figures</h2>
{figures_html or '<p class="meta">No figures.</p>'}
{problems_html}
<h2>Records</h2>
<p class="meta">Each record's config, environment and metrics; click a row to open it.</p>
{_records(records)}
</body>
</html>
"""


def report_figures(records: list[dict[str, Any]], grid_images: Iterable[Path] = ()
                   ) -> tuple[list[EmbeddedFigure], list[str]]:
    """The per-layer and loss figures the records support (plus any colorization grid PNGs), and a note for each
    kind of figure the records cannot support."""
    from sslbench import plots

    figures, notes = [], []
    for series, draw in ((plots.layer_series(records), plots.layer_figure),
                         (plots.loss_series(records), plots.loss_figure)):
        try:
            figure = draw(series)
        except plots.NoDataError as exc:
            notes.append(str(exc))
            continue
        figures.append(EmbeddedFigure(figure.get_suptitle(), plots.figure_png(figure)))
    for path in grid_images:
        figures.append(EmbeddedFigure("Colorizations of evaluation images: grayscale input, each colorizer, ground "
                                      "truth", Path(path).read_bytes()))
    return figures, notes


def write_report(records: list[dict[str, Any]], out: Path, problems: Iterable[str] = (), *, title: str,
                 source: str, grid_images: Iterable[Path] = ()) -> Path:
    """Render the report of ``records`` to ``out``."""
    figures, notes = report_figures(records, grid_images)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_report(records, figures, problems, title=title, source=source, notes=notes),
                   encoding="utf-8")
    return out
