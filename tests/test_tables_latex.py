"""``sslbench table --format latex``: a booktabs table float that compiles with plain pdflatex, with escaped names,
grouped short headers, constants in the caption, emphasis, published rows and notes.

The compile tests need ``pdflatex`` (texlive-latex-base and texlive-latex-recommended; ``.ci/run`` installs them):
missing, they fail in CI and are skipped elsewhere."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sslbench.cli import main
from sslbench.records import SCHEMA, load_records, nest
from sslbench.tables import LATEX_PACKAGES, build_table, latex_escape, render

SPECIALS = "a&b%c$d#e_f{g}h~i^j\\k"


def _record(variant, protocol, seed, metrics, pretext=None, options=None, encoder="timm/resnet18"):
    pretext = pretext or variant
    return {"schema": SCHEMA, "experiment": "latex", "variant": variant, "pretext": pretext,
            "variant_options": options or {}, "protocol": protocol, "dataset": "cifar10", "encoder": encoder,
            "seed": seed, "status": "ok", "reason": None,
            "config": {"pretext_run": {"pretext": pretext, "pretext_options": options or {}, "seed": seed,
                                       "budget": {"epochs": None, "steps": 300, "batch_size": 32}},
                       "protocol": protocol},
            "config_hash": f"{variant}-{protocol}-{seed}", "metrics": nest(metrics),
            "counts": {"train_images": 1000, "probe_images": 1000, "eval_images": 200},
            "data": {"eval": {"synthetic": False}}}


def _records(folder: Path) -> Path:
    """Records of five variants under linear and colorization, two seeds each, one with per-image values."""
    rows = {"random": (20.0, 80.0), "quantized": (61.0, 90.0), "q_norebal": (58.0, 91.0), "regression": (50.0, 89.5),
            "supervised": (85.0, 85.0)}
    for seed in (0, 1):
        for variant, (top1, auc) in rows.items():
            options = {"rebalance": False, "note": SPECIALS} if variant == "q_norebal" else {}
            pretext = "quantized" if variant == "q_norebal" else variant
            linear = _record(variant, "linear", seed, {"layer/stage1/top1": top1 - 10 + seed,
                                                       "layer/stage2/top1": top1 + seed, "best/top1": top1 + seed},
                             pretext, options)
            colour = _record(variant, "colorization", seed, {
                "auc": auc + seed / 10, "psnr": 20.0 + seed, "ssim": 0.8, "reference/gray/auc": 88.0,
                "reference/gray/psnr": 19.5, "reference/ground_truth/colourfulness": 40.0, "colourfulness": 30.0},
                pretext, options)
            for record in (linear, colour):
                path = folder / "cifar10" / "timm-resnet18" / f"{variant}__{record['protocol']}__seed{seed}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record, indent=2) + "\n")
                if variant == "quantized" and record["protocol"] == "linear":
                    values = np.zeros(200)
                    values[: int(round(2 * (top1 + seed)))] = 100.0
                    np.savez(path.with_name(path.stem + ".per_image.npz"), **{"best/top1|mean|values": values})
    return folder


def test_latex_escape_every_special_character():
    assert latex_escape(SPECIALS) == (r"a\&b\%c\$d\#e\_f\{g\}h\textasciitilde{}i\textasciicircum{}j"
                                      r"\textbackslash{}k")


def test_latex_structure(tmp_path):
    table = build_table(load_records(_records(tmp_path)), layout="rows", references=["treneska2022"])
    latex = render(table, "latex")
    lines = latex.splitlines()
    assert lines[0] == r"% sslbench table: needs \usepackage{booktabs} in the preamble"
    assert lines[1] == r"\begin{table}" and lines[-1] == r"\end{table}"
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in lines
    caption = next(line for line in lines if line.startswith(r"\caption{"))
    assert r"dataset: cifar10; encoder: timm/resnet18; budget: 300 steps, batch 32" in caption
    assert r"\label{tab:sslbench}" in lines
    assert r"\multicolumn{3}{c}{linear (top1)}" in latex and r"\cmidrule(lr){" in latex
    header = next(line for line in lines if "stage1" in line)
    assert "stage1 & stage2 & best" in header and "layer" not in header
    assert r"q\_norebal" in latex and latex_escape(SPECIALS) in latex
    assert r"\bfseries 61.5 $\pm$ 0.7" in latex and r"\underline{58.5 $\pm$ 0.7}" in latex
    body = lines[lines.index(r"\bottomrule") - 3: lines.index(r"\bottomrule")]
    assert any(r"\itshape published: colorization pretraining (treneska2022)" in line for line in body)
    assert r"\itshape 20.94" in latex
    assert r"auc, top1 in \%; psnr in dB" in latex
    gray = next(line for line in lines if line.startswith("gray (reference)"))
    assert "88.0" in gray and "19.5" in gray


@pytest.fixture(scope="module")
def pdflatex() -> str:
    """The pdflatex executable; missing, a failure in CI and a skip elsewhere."""
    path = shutil.which("pdflatex")
    if path is None:
        message = "pdflatex not found: install texlive-latex-base and texlive-latex-recommended"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _compile(latex: str, folder: Path, pdflatex: str) -> Path:
    """Compile ``latex`` in a minimal article with the packages its leading comment names."""
    packages = re.findall(r"\\usepackage\{([^}]+)\}", latex.splitlines()[0])
    assert packages == list(LATEX_PACKAGES)
    document = "\n".join([r"\documentclass{article}", *[rf"\usepackage{{{p}}}" for p in packages],
                          r"\begin{document}", latex, r"\end{document}", ""])
    (folder / "doc.tex").write_text(document)
    result = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=folder,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Undefined control sequence" not in result.stdout
    pdf = folder / "doc.pdf"
    assert pdf.exists() and pdf.stat().st_size > 1000
    return pdf


def _pdf_text(pdf: Path) -> str | None:
    if shutil.which("pdftotext") is None:
        return None
    return subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, timeout=60,
                          check=True).stdout


def test_latex_compiles_with_pdflatex(tmp_path, pdflatex, capsys):
    runs = _records(tmp_path / "runs")
    out = tmp_path / "table.tex"
    assert main(["table", "--runs", str(runs), "--format", "latex", "--layout", "rows", "--ci", "--metrics",
                 "best/top1,auc,psnr", "--reference", "treneska2022,zhang2016", "--output", str(out)]) == 0
    latex = out.read_text()
    assert "[" in latex and r"$^\dagger$" in latex, "intervals where per-image values exist, a dagger elsewhere"
    pdf = _compile(latex, tmp_path, pdflatex)
    text = _pdf_text(pdf)
    if text is not None:
        assert "61.5 [" in text and "norebal" in text and "published: grayscale (zhang2016)" in text
        assert "a&b%c$d#e" in text and "f{g}h" in text


def test_latex_from_a_real_run_compiles(tmp_path, pdflatex, capsys, one_thread):
    runs = tmp_path / "runs"
    code = main(["run", "--pretext", "random,regression", "--protocol", "linear", "--steps", "1", "--batch-size",
                 "16", "--subset", "48", "--eval-subset", "32", "--eval-epochs", "1", "--device", "cpu", "--quiet",
                 "--out", str(runs), "--cache-dir", str(tmp_path / "cache"), "--set", "encoder.width_mult=0.25"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["table", "--runs", str(runs), "--format", "latex", "--ci", "--metrics", "top1"]) == 0
    latex, err = capsys.readouterr()
    assert "warning" not in err, err
    assert re.search(r"\d+\.\d \[\d+\.\d, \d+\.\d\]", latex), "the real per-image files give intervals"
    _compile(latex.strip(), tmp_path, pdflatex)
