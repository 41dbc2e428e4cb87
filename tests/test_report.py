"""``sslbench report``: a self-contained HTML page, checked as text and as headless Chromium renders it."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import pytest

from sslbench.cli import main

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "results" / "cifar10-linear" / "runs"
CHROMIUM = Path("/usr/bin/chromium")
HOSTILE_COMMAND = "sslbench run --out '</pre><script>document.title=\"pwned\"</script>'"
HOSTILE_REASON = "<img src=x onerror=alert(1)> & friends"


class _Page(HTMLParser):
    """Every start tag with its attributes, and the text inside <style> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed cifar10-linear records (real), plus a failed copy of one whose reason and command hold HTML."""
    root = tmp_path_factory.mktemp("report") / "runs"
    shutil.copytree(COMMITTED, root)
    source = next(root.rglob("random__linear__seed0.json"))
    record = json.loads(source.read_text())
    record.update(seed=7, status="failed", reason=HOSTILE_REASON, metrics={})
    record["env"]["command"] = HOSTILE_COMMAND
    source.with_name("random__linear__seed7.json").write_text(json.dumps(record, indent=2))
    return root


@pytest.fixture(scope="module")
def report(runs: Path) -> Path:
    out = runs.parent / "site" / "report.html"
    assert main(["report", "--runs", str(runs), "--out", str(out), "--title", "sslbench <test> report"]) == 0
    return out


def _records(runs: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(runs.rglob("*.json")) if p.name != "manifest.json"]


def test_report_loads_nothing_from_outside(report):
    text = report.read_text()
    page = _Page()
    page.feed(text)
    names = [tag for tag, _ in page.tags]
    assert not {"link", "iframe", "object", "embed", "base"} & set(names)
    for tag, attrs in page.tags:
        for name in ("src", "href", "srcset", "poster", "data"):
            if attrs.get(name) is not None:
                assert attrs[name].startswith("data:image/png;base64,"), (tag, name, attrs[name][:80])
    assert not any("url(" in style or "@import" in style for style in page.styles)
    (csp,) = [attrs["content"] for tag, attrs in page.tags if attrs.get("http-equiv") == "Content-Security-Policy"]
    assert "default-src 'none'" in csp and "img-src data:" in csp


def test_report_embeds_the_figures_table_and_every_record(report, runs):
    from PIL import Image

    text = report.read_text()
    page = _Page()
    page.feed(text)
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert len(images) == 2
    for attrs in images:
        png = base64.b64decode(attrs["src"].split(",", 1)[1])
        with Image.open(io.BytesIO(png)) as image:
            assert image.format == "PNG" and min(image.size) > 200
    records = _records(runs)
    rows = re.findall(r"<td>([^<]*)</td>", text)  # every cell: the variant column need not come first
    assert set(rows) >= {r["pretext"] for r in records}
    assert text.count('<details class="record">') == len(records)
    for record in records:
        assert escape(json.dumps(record["config"], indent=2, ensure_ascii=False)) in text
    assert "<title>sslbench &lt;test&gt; report</title>" in text


def test_report_escapes_record_text(report):
    text = report.read_text()
    assert escape(HOSTILE_REASON) in text and HOSTILE_REASON not in text
    assert escape(json.dumps(HOSTILE_COMMAND)[1:-1]) in text
    assert "<script>document.title" not in text and "<img src=x" not in text
    assert len(re.findall(r"<script\b", text)) == 1


def _chromium(*args: str, user_data: Path) -> subprocess.CompletedProcess:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} not found (Debian package chromium; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={user_data}", *args]
    result = subprocess.run(command, capture_output=True, timeout=180)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    return result


def test_chromium_renders_the_table_and_decodes_every_image(report, tmp_path):
    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", report.as_uri(),
                    user_data=tmp_path / "profile").stdout.decode()
    body = re.search(r"<body([^>]*)>", dom).group(1)
    attrs = dict(re.findall(r'(data-[\w-]+)="([^"]*)"', body))
    assert attrs == {"data-images": "2", "data-images-loaded": "2", "data-fetched": "0"}, body
    table = re.search(r'<table class="comparison" id="comparison">(.*?)</table>', dom, re.S).group(1)
    assert table.count("<tr>") >= 2 and "quantized" in table
    assert dom.count("<img ") == 2


def test_chromium_screenshot_is_not_blank(report, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars", report.as_uri(),
              user_data=tmp_path / "profile")
    with Image.open(shot) as image:
        rgb = image.convert("RGB")
        assert rgb.size == (1280, 2000)
        colours = rgb.getcolors(1 << 20)
    assert len(colours) > 100
    white = sum(count for count, colour in colours if colour == (255, 255, 255))
    assert white < 0.95 * 1280 * 2000


def test_report_cli_usage_errors(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["report", "--runs", str(missing), "--out", str(tmp_path / "r.html")]) == 2
    assert str(missing) in capsys.readouterr().err
    assert main(["report", "--runs", str(COMMITTED), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_report_with_colorization_grid(tmp_path, one_thread):
    pytest.importorskip("sslbench.colorize")
    runs, out = tmp_path / "runs", tmp_path / "report.html"
    assert main(["run", "--pretext", "regression", "--protocol", "linear", "--seeds", "0", "--steps", "3",
                 "--subset", "32", "--eval-subset", "32", "--set", "encoder.width_mult=0.25", "--set",
                 "linear.epochs=1", "--out", str(runs), "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    assert main(["report", "--runs", str(runs), "--out", str(out), "--grid", "--num-images", "2",
                 "--device", "cpu"]) == 0
    page = _Page()
    page.feed(out.read_text())
    captions = [attrs["alt"] for tag, attrs in page.tags if tag == "img"]
    assert len(captions) == 3 and captions[2].startswith("Colorizations of evaluation images")
