"""``sslbench plot``: figures drawn from real run records, their plotted data checked against the records' JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sslbench import plots
from sslbench.cli import main

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "results" / "cifar10-linear" / "runs"


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """Real records of a tiny run: random and regression, linear and knn probes, seeds 0 and 1; regression trains 12
    steps, so its history logs steps 10 and 12."""
    root = tmp_path_factory.mktemp("plots")
    out = root / "runs"
    code = main(["run", "--pretext", "random,regression", "--protocol", "linear,knn", "--seeds", "0,1",
                 "--steps", "12", "--subset", "64", "--eval-subset", "64", "--set", "encoder.width_mult=0.25",
                 "--set", "linear.epochs=1", "--out", str(out), "--cache-dir", str(root / "cache"), "--quiet"])
    assert code == 0
    return out


def _json_records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("*.json")) if p.name != "manifest.json"]


def _variant(record: dict) -> str:
    return record.get("variant") or record["pretext"]


def _axes(figure, title: str):
    matches = [ax for ax in figure.axes if ax.get_title() == title]
    assert len(matches) == 1, [ax.get_title() for ax in figure.axes]
    return matches[0]


def _line(ax, gid: str):
    matches = [line for line in ax.get_lines() if line.get_gid() == gid]
    assert len(matches) == 1, [line.get_gid() for line in ax.get_lines()]
    return matches[0]


def test_layer_curves_are_the_seed_mean_of_the_records(tiny_runs):
    records = _json_records(tiny_runs)
    figure = plots.layer_figure(plots.layer_series(plots.read_runs(tiny_runs)[0]))
    checked = 0
    for protocol in ("linear", "knn"):
        for variant in ("random", "regression"):
            members = [r for r in records if r["protocol"] == protocol and _variant(r) == variant]
            assert sorted(r["seed"] for r in members) == [0, 1]
            taps = list(members[0]["metrics"]["layer"])
            expected = [np.mean([r["metrics"]["layer"][tap]["top1"] for r in members]) for tap in taps]
            ax = _axes(figure, f"synthetic · vgg_small · {protocol}")
            line = _line(ax, variant)
            np.testing.assert_allclose(line.get_ydata(), expected)
            assert [t.get_text() for t in ax.get_xticklabels()] == taps
            assert line.get_label() == f"{variant} (n=2)"
            checked += 1
    assert checked == 4


def test_layer_band_is_mean_plus_minus_sample_std(tiny_runs):
    records = _json_records(tiny_runs)
    series = {(s.protocol, s.variant): s for s in plots.layer_series(records, interval="std")}
    assert set(series) == {(p, v) for p in ("linear", "knn") for v in ("random", "regression")}
    s = series[("linear", "regression")]
    assert s.band == "std"
    values = np.array([[r["metrics"]["layer"][tap]["top1"] for tap in s.x] for r in records
                       if r["protocol"] == "linear" and r["pretext"] == "regression"])
    std = values.std(axis=0, ddof=1)
    np.testing.assert_allclose(s.high - s.mean, std)
    np.testing.assert_allclose(s.mean - s.low, std)
    ax = _axes(plots.layer_figure([s]), "synthetic · vgg_small · linear")
    (band,) = ax.collections
    y = band.get_paths()[0].vertices[:, 1]
    assert y.min() == pytest.approx((values.mean(0) - std).min())
    assert y.max() == pytest.approx((values.mean(0) + std).max())


def test_layer_band_is_the_bootstrap_interval_over_test_images(tiny_runs):
    """Where every seed saved per-image values, the band is the percentile interval of the seed mean over 1000
    resamples of the test images (row b of default_rng(0).integers(0, n, (1000, n)), shared by the seeds)."""
    sidecars = sorted(tiny_runs.rglob("regression__linear__seed*.per_image.npz"))
    assert len(sidecars) == 2
    records = plots.read_runs(tiny_runs)[0]
    (s,) = [s for s in plots.layer_series(records) if (s.protocol, s.variant) == ("linear", "regression")]
    assert s.band == "bootstrap95"
    for i, tap in enumerate(s.x):
        correct = [np.load(path)[f"layer/{tap}/top1|mean|values"] for path in sidecars]
        n = len(correct[0])
        index = np.random.default_rng(0).integers(0, n, size=(1000, n))
        resampled = np.mean([values[index].mean(axis=1) for values in correct], axis=0)
        low, high = np.percentile(resampled, [2.5, 97.5])
        assert (s.low[i], s.high[i]) == pytest.approx((low, high))
        assert s.mean[i] == pytest.approx(np.mean([values.mean() for values in correct]))
    figure = plots.layer_figure([s])
    assert "95% bootstrap interval" in figure.get_suptitle()


def test_loss_curve_is_the_seed_mean_at_common_steps(tiny_runs):
    records = _json_records(tiny_runs)
    trained = [r for r in records if r["pretext"] == "regression" and r["protocol"] == "linear"]
    histories = [{p["step"]: p["loss"] for p in r["train"]["history"]} for r in trained]
    steps = sorted(set(histories[0]) & set(histories[1]))
    assert steps == [10, 12]
    figure = plots.loss_figure(plots.loss_series(records))
    ax = _axes(figure, "synthetic · vgg_small")
    assert [line.get_gid() for line in ax.get_lines()] == ["regression"]
    line = _line(ax, "regression")
    np.testing.assert_array_equal(line.get_xdata(), steps)
    np.testing.assert_allclose(line.get_ydata(), [np.mean([h[s] for h in histories]) for s in steps])


def test_plot_cli_writes_png_and_pdf(tiny_runs, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "figures"
    assert main(["plot", "--runs", str(tiny_runs), "--kind", "layers,loss", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    for stem in ("layers_top1", "loss"):
        png, pdf = out / f"{stem}.png", out / f"{stem}.pdf"
        assert str(png) in printed and str(pdf) in printed
        with Image.open(png) as image:
            assert image.format == "PNG" and min(image.size) > 200
            assert len(image.convert("RGB").getcolors(1 << 16) or []) > 20
        assert pdf.read_bytes()[:5] == b"%PDF-"


def test_configs_that_differ_beyond_the_seed_are_not_averaged(tiny_runs, tmp_path):
    """The two seeds' records differ in their run seed only and share a line (see above); once one of them has other
    generated data (``dataset_options.seed``, part of the configuration), they are two lines of one seed each."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for path in tiny_runs.rglob("regression__linear__seed*.json"):
        shutil.copy(path, runs / path.name)
    changed = runs / "regression__linear__seed1.json"
    record = json.loads(changed.read_text())
    record["config"]["pretext_run"]["dataset_options"]["seed"] += 1
    changed.write_text(json.dumps(record))
    series = plots.layer_series(plots.read_runs(runs)[0])
    assert len(series) == 2
    assert all(len(s.seeds) == 1 for s in series)
    assert len({s.label for s in series}) == 2 and all(s.label.startswith("regression [") for s in series)
    original = json.loads((runs / "regression__linear__seed0.json").read_text())
    seed0 = next(s for s in series if s.seeds == [0])
    np.testing.assert_allclose(seed0.mean, [original["metrics"]["layer"][t]["top1"] for t in seed0.x])


def test_unreadable_files_are_reported_and_passed_over(tiny_runs, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(tiny_runs, runs)
    broken = runs / "synthetic" / "vgg_small" / "regression__knn__seed9.json"
    broken.write_text('{"schema": "sslbench.run/2", "metrics": {')
    assert main(["plot", "--runs", str(runs), "--kind", "layers", "--out", str(tmp_path / "f")]) == 0
    err = capsys.readouterr().err
    assert str(broken) in err and "truncated" in err


def test_committed_records(tmp_path):
    """The committed cifar10-linear records (real, three seeds): each line is its variant's mean over seeds."""
    records, _ = plots.read_runs(COMMITTED)
    raw = [r for r in _json_records(COMMITTED) if r["status"] == "ok"]
    figure = plots.layer_figure(plots.layer_series(records))
    for protocol in ("linear", "knn"):
        ax = _axes(figure, f"cifar10 · vgg_small · {protocol}")
        mine = [r for r in raw if r["protocol"] == protocol]
        for variant in {r["variant"] for r in mine}:
            seeds = [r for r in mine if r["variant"] == variant]
            expected = np.mean([[v["top1"] for v in r["metrics"]["layer"].values()] for r in seeds], axis=0)
            np.testing.assert_allclose(_line(ax, variant).get_ydata(), expected)
    loss_ax = _axes(plots.loss_figure(plots.loss_series(records)), "cifar10 · vgg_small")
    cgan = [r["train"]["history"] for r in raw if r["variant"] == "cgan" and r["protocol"] == "linear"]
    np.testing.assert_allclose(_line(loss_ax, "cgan (loss_G)").get_ydata(),
                               np.mean([[h["loss_G"] for h in history] for history in cgan], axis=0))
    assert "random" not in [line.get_gid() for line in loss_ax.get_lines()]
    assert main(["plot", "--runs", str(COMMITTED), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "layers_top1.pdf").exists() and (tmp_path / "loss.png").exists()


def test_nothing_to_plot_is_a_usage_error(tiny_runs, tmp_path, capsys):
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    for path in tiny_runs.rglob("random__*.json"):
        shutil.copy(path, untrained / path.name)
    assert main(["plot", "--runs", str(untrained), "--kind", "loss", "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert str(untrained) in err and "train.history" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["plot", "--runs", str(empty), "--out", str(tmp_path / "f")]) == 2
    assert "no run records" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["plot", "--runs", str(empty), "--kind", "curves", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "choose from layers, loss, grid" in capsys.readouterr().err


def test_tensorboard_scalars_match_the_history(tiny_runs, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = tmp_path / "tb"
    assert main(["plot", "--runs", str(tiny_runs), "--kind", "loss", "--out", str(tmp_path / "f"),
                 "--tensorboard", str(log_dir)]) == 0
    for seed in (0, 1):
        record = json.loads(next(tiny_runs.rglob(f"regression__linear__seed{seed}.json")).read_text())
        events = EventAccumulator(str(log_dir / "synthetic" / "vgg_small" / "regression" / f"seed{seed}"))
        events.Reload()
        scalars = events.Scalars("train/loss")
        assert [e.step for e in scalars] == [p["step"] for p in record["train"]["history"]]
        np.testing.assert_allclose([e.value for e in scalars], [p["loss"] for p in record["train"]["history"]],
                                   rtol=1e-6)
    assert not (log_dir / "synthetic" / "vgg_small" / "random").exists()


def test_grid_kind_draws_the_colorizations(tiny_runs, tmp_path):
    pytest.importorskip("sslbench.colorize")
    from PIL import Image

    out = tmp_path / "grid"
    assert main(["plot", "--runs", str(tiny_runs), "--kind", "grid", "--num-images", "2", "--device", "cpu",
                 "--out", str(out)]) == 0
    with Image.open(out / "grid.png") as image:
        assert min(image.size) > 100
    assert (out / "grid.pdf").read_bytes()[:5] == b"%PDF-"


def test_plot_help_imports_neither_torch_nor_matplotlib():
    code = ("import sys\nfrom sslbench.cli import main\n"
            "try:\n    main(['plot', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert not {'torch', 'matplotlib'} & set(sys.modules), 'plot --help imported torch or matplotlib'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--tensorboard" in result.stdout and "not installed" in result.stdout
