"""Run records (atomic, schema, unreadable files reported) and the tables made from them: honest aggregation over
seeds, variants, formats, ranking, reference rows, published rows and bootstrap intervals."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from sslbench.bootstrap import bootstrap_interval, metric_value, resample_indices
from sslbench.cli import main
from sslbench.errors import UsageError
from sslbench.protocol import PerImage
from sslbench.records import (SCHEMA, flatten, load_records, nest, read_per_image, read_record, record_path,
                              write_record)
from sslbench.tables import build_table, make_table, print_rich, render


def _record(variant, protocol, seed, metrics, status="ok", dataset="synthetic", synthetic=True, pretext=None,
            options=None, epochs=5.0, encoder="vgg_small"):
    """A run/2 record as the runner writes it (the fields the tables read)."""
    pretext = pretext or variant
    return {"schema": SCHEMA, "experiment": "test", "variant": variant, "pretext": pretext,
            "variant_options": options or {}, "protocol": protocol, "dataset": dataset, "encoder": encoder,
            "seed": seed, "status": status, "reason": None if status == "ok" else "boom",
            "config": {"pretext_run": {"pretext": pretext, "pretext_options": options or {}, "seed": seed,
                                       "budget": {"epochs": epochs, "steps": None, "batch_size": 64}},
                       "protocol": protocol, "protocol_options": {}},
            "config_hash": f"hash-{variant}-{seed}-{epochs}", "metrics": nest(metrics),
            "counts": {"train_images": 2000, "eval_images": 500},
            "data": {"eval": {"synthetic": synthetic}}}


def _write(folder: Path, record: dict) -> Path:
    path = folder / record["dataset"] / record["encoder"] / \
        f"{record['variant']}__{record['protocol']}__seed{record['seed']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def _cell(table, variant, protocol, metric):
    row = next(r for r in table.rows if r.name == variant and r.kind == "variant")
    column = next(c for c in table.columns if (c.protocol, c.metric) == (protocol, metric))
    return table.cells[(row, column)]


def _md_row(md: str, label: str) -> list[str]:
    """The Markdown row labelled ``label``: the label and the cells after it."""
    line = next(line for line in md.splitlines() if f"| {label} |" in line)
    parts = [part.strip() for part in line.strip("|").split("|")]
    return parts[parts.index(label):]


# ---------------------------------------------------------------------------------------------------------------
# Records


def test_nest_and_flatten_round_trip():
    flat = {"layer/conv1/top1": 10.0, "layer/conv2/top1": 20.0, "best/top1": 20.0, "best/layer": "conv2"}
    nested = nest(flat)
    assert nested["layer"]["conv1"]["top1"] == 10.0 and nested["best"]["layer"] == "conv2"
    assert flatten(nested) == flat


def test_write_is_atomic_and_readable(tmp_path):
    path = record_path(tmp_path, dataset="cifar10", encoder="timm/resnet18", variant="quantized",
                       protocol="linear", seed=1)
    write_record(path, {"pretext": "quantized", "variant": "quantized", "metrics": {"a": 1.0}})
    assert path.name == "quantized__linear__seed1.json" and "timm-resnet18" in str(path)
    assert read_record(path)["metrics"] == {"a": 1.0}
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    path.write_text('{"schema": "sslbench.run/2", "truncat')
    assert read_record(path) is None
    loaded = load_records(tmp_path)
    assert loaded == [] and len(loaded.problems) == 1
    assert loaded.problems[0].path == path and "truncated JSON" in loaded.problems[0].reason


def test_load_records_names_every_unreadable_file(tmp_path):
    good = _write(tmp_path, _record("random", "linear", 0, {"best/top1": 30.0}))
    files = {"truncated.json": '{"schema": "sslbench.run/2", "metrics": {"a": 1',
             "invalid.json": "{'schema': 'sslbench.run/2'}",
             "list.json": "[1, 2]",
             "other.json": '{"schema": "someone.else/1"}',
             "noschema.json": '{"variant": "x"}',
             "empty.json": "",
             "manifest.json": '{"command": "sslbench run"}',
             "plan.json": '{"schema": "sslbench.plan/1"}'}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    loaded = load_records(tmp_path)
    assert [r["_path"] for r in loaded] == [str(good)]
    reasons = {p.path.name: p.reason for p in loaded.problems}
    assert set(reasons) == {"truncated.json", "invalid.json", "list.json", "other.json", "noschema.json",
                            "empty.json"}
    assert "truncated JSON" in reasons["truncated.json"] and "invalid JSON" in reasons["invalid.json"]
    assert "list, not an object" in reasons["list.json"]
    assert "'someone.else/1'" in reasons["other.json"] and "no schema key" in reasons["noschema.json"]
    assert "empty" in reasons["empty.json"]


def test_run1_records_read_as_variant_equals_pretext(tmp_path):
    path = tmp_path / "quantized__linear__seed0.json"
    path.write_text(json.dumps({"schema": "sslbench.run/1", "pretext": "quantized", "protocol": "linear",
                                "metrics": {"best": {"top1": 50.0}}}))
    record = read_record(path)
    assert record["variant"] == "quantized" and record["variant_options"] == {}


def test_records_written_by_cli_are_valid_json(tmp_path):
    path = tmp_path / "x.json"
    write_record(path, {"pretext": "p", "metrics": {"m": float("nan")}})
    strict = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert strict["schema"] == SCHEMA


def test_read_per_image_round_trip_and_bad_keys(tmp_path):
    record = _write(tmp_path, _record("random", "linear", 0, {"best/top1": 50.0}))
    assert read_per_image(record) == {}
    sidecar = record.with_name(record.stem + ".per_image.npz")
    np.savez(sidecar, **{"best/top1|mean|values": np.array([0.0, 100.0]),
                         "map|ap|scores": np.zeros((2, 3)), "map|ap|targets": np.ones((2, 3)),
                         "map|ap|difficult": np.zeros((2, 3), dtype=bool)})
    loaded = read_per_image(record)
    assert loaded["best/top1"].kind == "mean" and loaded["best/top1"].arrays["values"].tolist() == [0.0, 100.0]
    assert set(loaded["map"].arrays) == {"scores", "targets", "difficult"}
    np.savez(sidecar, **{"no-separators": np.zeros(2)})
    with pytest.raises(ValueError, match="<metric>|<kind>|<array>"):
        read_per_image(record)


# ---------------------------------------------------------------------------------------------------------------
# Aggregation


def test_seeds_aggregate_with_their_count():
    records = [_record("random", "linear", s, {"best/top1": v}) for s, v in [(0, 10.0), (1, 20.0)]]
    stat = _cell(build_table(records), "random", "linear", "best/top1")
    assert stat.mean == pytest.approx(15.0) and stat.std == pytest.approx(7.0710678) and stat.n == 2
    md = make_table(records)
    assert _md_row(md, "random")[1] == "15.0 ± 7.1" and "every cell: 2 seeds" in md


def test_failed_and_null_seeds_show_in_the_cell():
    records = [_record("quantized", "linear", 0, {"best/top1": 60.9}),
               _record("quantized", "linear", 1, {"best/top1": 61.5}),
               _record("quantized", "linear", 2, {}, status="failed"),
               _record("cgan", "linear", 0, {"best/top1": 50.0}),
               _record("cgan", "linear", 1, {"best/top1": None}),
               _record("random", "linear", 0, {"best/top1": 10.0}),
               _record("random", "linear", 1, {"best/top1": 12.0})]
    md = make_table(records, metrics=["best/top1"])
    assert _md_row(md, "quantized")[1].strip("*") == "61.2 ± 0.4 (2/3; 1 failed)"
    assert _md_row(md, "cgan")[1] == "50.0 (1/2; 1 null)"
    assert _md_row(md, "random")[1] == "11.0 ± 1.4 (n=2)"
    all_failed = make_table([_record("regression", "linear", s, {}, status="failed") for s in (0, 1)])
    assert _md_row(all_failed, "regression")[1] == "failed (2/2)"


def test_seeds_of_different_configs_are_never_averaged(tmp_path):
    a = _write(tmp_path, _record("quantized", "linear", 0, {"best/top1": 60.0}, epochs=5.0))
    b = _write(tmp_path, _record("quantized", "linear", 1, {"best/top1": 80.0}, epochs=10.0))
    _write(tmp_path, _record("random", "linear", 0, {"best/top1": 10.0}))
    _write(tmp_path, _record("random", "linear", 1, {"best/top1": 14.0}))
    table = build_table(load_records(tmp_path))
    assert _cell(table, "quantized", "linear", "best/top1").status == "mixed configs"
    random = _cell(table, "random", "linear", "best/top1")
    assert random.n == 2 and random.mean == pytest.approx(12.0), "seeds alone must not split a config"
    warning = next(w for w in table.warnings if "different configs" in w)
    assert str(a) in warning and str(b) in warning and "budget.epochs" in warning
    assert "mixed configs" in _md_row(render(table), "quantized")[1]


def test_a_seed_recorded_twice_counts_once(tmp_path):
    first = _write(tmp_path / "a", _record("random", "linear", 0, {"best/top1": 10.0}))
    second = _write(tmp_path / "b", _record("random", "linear", 0, {"best/top1": 10.0}))
    table = build_table(load_records(tmp_path))
    assert _cell(table, "random", "linear", "best/top1").n == 1
    assert any(str(first) in w and str(second) in w for w in table.warnings)


def test_cli_warns_per_unreadable_record_and_n_falls(tmp_path, capsys):
    _write(tmp_path, _record("quantized", "linear", 0, {"best/top1": 60.0}))
    broken = _write(tmp_path, _record("quantized", "linear", 1, {"best/top1": 70.0}))
    assert main(["table", "--runs", str(tmp_path), "--format", "csv"]) == 0
    assert "quantized,linear,best/top1,65,7.07" in capsys.readouterr().out
    broken.write_text(broken.read_text()[:150])
    assert main(["table", "--runs", str(tmp_path), "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    row = next(line for line in out.splitlines() if ",best/top1," in line).split(",")
    assert row[5:8] == ["60", "", "1"]
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(broken) in warnings[0] and "truncated JSON" in warnings[0]


def test_rows_are_variants_bounds_first_and_last_with_their_options():
    records = [_record(v, "linear", 0, {"best/top1": t}, pretext=p, options=o) for v, p, o, t in [
        ("supervised", None, None, 90.0), ("quantized-norebal", "quantized", {"rebalance": False}, 50.0),
        ("random", None, None, 10.0), ("quantized", None, None, 60.0), ("splitbrain10", "splitbrain", None, 40.0),
        ("splitbrain2", "splitbrain", None, 45.0)]]
    md = make_table(records)
    order = [line.split(" | ")[0].lstrip("| ") for line in md.splitlines()[2:8]]
    assert order == ["random", "quantized", "quantized-norebal", "splitbrain2", "splitbrain10", "supervised"]
    assert "quantized-norebal: quantized with rebalance=false" in md
    assert "splitbrain10: splitbrain with its default options" in md
    assert "quantized: quantized" not in md


def test_bounds_follow_the_pretext_not_the_variant_name():
    """A scratch baseline named otherwise (``scratch-unet``, pretext ``untrained``) sits with ``random`` and is not
    ranked, however high it scores; a pretext variant called ``random-ish`` is ranked like any other."""
    records = [_record(v, "linear", 0, {"best/top1": t}, pretext=p) for v, p, t in [
        ("scratch-unet", "untrained", 99.0), ("random", None, 10.0), ("random-ish", "quantized", 50.0),
        ("b", "regression", 40.0), ("c", "cgan", 30.0), ("sup", "supervised", 95.0)]]
    md = make_table(records)
    order = [line.split(" | ")[0].lstrip("| ") for line in md.splitlines()[2:8]]
    assert order == ["random", "scratch-unet", "b", "c", "random-ish", "sup"]
    assert _md_row(md, "scratch-unet")[1] == "99.0" and _md_row(md, "sup")[1] == "95.0"
    assert _md_row(md, "random-ish")[1] == "**50.0**" and _md_row(md, "b")[1] == "<u>40.0</u>"


def test_best_bold_second_underlined_among_pretexts():
    records = [_record(v, "linear", 0, {"best/top1": t, "layer/stage1/top1": s}) for v, t, s in [
        ("random", 99.0, 1.0), ("a", 60.0, 30.0), ("b", 70.0, 30.0), ("c", 65.0, 20.0), ("supervised", 95.0, 50.0)]]
    md = make_table(records)
    assert _md_row(md, "b")[2] == "**70.0**" and _md_row(md, "c")[2] == "<u>65.0</u>" and _md_row(md, "a")[2] == "60.0"
    assert _md_row(md, "random")[2] == "99.0" and _md_row(md, "supervised")[2] == "95.0"
    assert _md_row(md, "a")[1] == "**30.0**" and _md_row(md, "b")[1] == "**30.0**", "ties share the rank"
    assert _md_row(md, "c")[1] == "<u>20.0</u>"


def test_constant_columns_move_to_the_caption_and_units_are_named():
    records = [_record("random", "linear", 0, {"best/top1": 30.0}),
               _record("random", "colorization", 0, {"auc": 90.0, "psnr": 21.0, "ssim": 0.8512})]
    md = make_table(records)
    header = md.splitlines()[0]
    assert header.startswith("| variant |") and "dataset" not in header and "encoder" not in header
    assert "(dataset: synthetic; encoder: vgg_small; budget: 5 epochs, batch 64; 2000 train, 500 eval images)" in md
    assert "Units: auc, top1 in %; psnr in dB." in md
    assert "0.851" in _md_row(md, "random")
    two = make_table(records + [_record("random", "linear", 0, {"best/top1": 40.0}, dataset="cifar10",
                                        synthetic=False)])
    assert two.splitlines()[0].startswith("| dataset | variant |")


def test_markdown_latex_csv():
    records = [
        _record("supervised", "linear", 0, {"best/top1": 80.0, "layer/stage1/top1": 50.0}),
        _record("random", "linear", 0, {"best/top1": 30.0, "layer/stage1/top1": 25.0}),
        _record("quantized", "linear", 0, {"best/top1": 60.0, "layer/stage1/top1": 40.0}),
        _record("random", "colorization", 0, {}, status="skipped"),
    ]
    md = make_table(records, "md").splitlines()
    assert md[0] == "| variant | colorization | linear (top1) / stage1 | linear (top1) / best |"
    assert [line.split(" | ")[0].lstrip("| ") for line in md[2:5]] == ["random", "quantized", "supervised"]
    assert "n/a" in md[2] and "synthetic" in md[-1]
    latex = make_table(records, "latex")
    assert r"\begin{tabular}" in latex and r"\multicolumn{2}{c}{linear (top1)}" in latex
    csv = make_table(records, "csv").splitlines()
    assert csv[0].startswith("dataset,encoder,variant,protocol,metric,mean,std,n,seeds,failed,null,status")
    assert any(line.startswith("synthetic,vgg_small,quantized,linear,best/top1,60,,1,1,0,0,ok") for line in csv)


def test_bookkeeping_is_hidden_unless_asked_for():
    records = [_record("random", "linear", 0, {"best/top1": 30.0, "layer/stage1/dims": 9248, "train/frozen_steps": 3,
                                                "best/layer": "stage1"})]
    header = make_table(records, "md").splitlines()[0]
    assert "best" in header and "dims" not in header and "frozen_steps" not in header and "layer" not in header
    assert "linear / stage1 dims" in make_table(records, "md", metrics=["dims"]).splitlines()[0]


def test_table_of_failed_records_only():
    md = make_table([_record("regression", "linear", 0, {}, status="failed")], "md").splitlines()
    assert md[0] == "| variant | linear |" and md[2] == "| regression | failed |"


def test_metric_filter_applies_to_every_format_and_unknown_names_are_usage_errors(capsys, tmp_path):
    records = [_record("random", "linear", 0, {"best/top1": 30.0, "layer/stage1/top1": 25.0})]
    header = make_table(records, "md", metrics=["best/top1"]).splitlines()[0]
    assert "best" in header and "stage1" not in header
    csv = make_table(records, "csv", metrics=["best/top1"]).splitlines()
    assert len(csv) == 2 and ",best/top1," in csv[1]
    with pytest.raises(UsageError, match="layer/stage1/top1"):
        make_table(records, "csv", metrics=["best/top1", "mIoU"])
    _write(tmp_path, records[0])
    assert main(["table", "--runs", str(tmp_path), "--metrics", "miou"]) == 2
    err = capsys.readouterr().err
    assert "--metrics miou" in err and "best/top1" in err and "layer/stage1/top1" in err


# ---------------------------------------------------------------------------------------------------------------
# Reference rows, published rows


def _colorization(variant, seed, auc, gray_auc=88.0):
    return _record(variant, "colorization", seed, {
        "auc": auc, "psnr": 20.0 + seed, "reference/gray/auc": gray_auc, "reference/gray/psnr": 19.0,
        "reference/ground_truth/colourfulness": 40.0, "colourfulness": 30.0})


def test_layout_rows_turns_gray_and_ground_truth_into_rows():
    records = [_colorization("random", 0, 80.0), _colorization("quantized", 0, 91.0),
               _colorization("random", 1, 81.0, gray_auc=89.0), _colorization("quantized", 1, 92.0, gray_auc=89.0)]
    columns_md = make_table(records)
    assert "colorization / gray auc" in columns_md.splitlines()[0]
    md = make_table(records, layout="rows")
    header = md.splitlines()[0]
    assert header == "| variant | colorization / auc | colorization / colourfulness | colorization / psnr |"
    labels = [line.split(" | ")[0].lstrip("| ") for line in md.splitlines()[2:6]]
    assert labels == ["ground truth (reference)", "gray (reference)", "random", "quantized"]
    assert _md_row(md, "gray (reference)")[1:] == ["88.5 ± 0.7", "", "19.0 ± 0.0"]
    assert _md_row(md, "ground truth (reference)")[1:] == ["", "40.0 ± 0.0", ""]
    disagree = [_colorization("random", 0, 80.0), _colorization("quantized", 0, 91.0, gray_auc=70.0)]
    table = build_table(disagree, layout="rows")
    assert "differs by variant" in _md_row(render(table), "gray (reference)")[1]
    assert any("disagree" in w for w in table.warnings)


def test_published_rows_sit_in_corresponding_columns_only():
    records = [_record("random", "colorization", 0, {"psnr": 18.0, "auc": 85.0}),
               _record("cgan", "colorization", 0, {"psnr": 21.0, "auc": 88.0})]
    table = build_table(records, references=["treneska2022", "splitbrain2017"])
    md = render(table)
    row = _md_row(md, "*published: colorization pretraining (treneska2022)*")
    assert row[1:] == ["", "*20.94*"]
    assert not any("scratch" in line for line in md.splitlines() if line.startswith("|")), \
        "Treneska's scratch row has no colorization number"
    assert "splitbrain2017" in md and "no published row shown" in md
    assert "VOC accuracy = finetune_cls exact_match" in md and "Sensors 2022" in md
    with pytest.raises(UsageError, match="zhang2016"):
        build_table(records, references=["zhang2017"])
    two = build_table(records + [_record("random", "colorization", 0, {"psnr": 17.0}, dataset="cifar10")],
                      references=["treneska2022"])
    assert _md_row(render(two), "*published*")[1:] == ["*published: colorization pretraining (treneska2022)*", "",
                                                       "*20.94*"]
    assert r"\itshape published" in render(two, "latex")


def test_zhang_published_rows_with_reference_layout():
    records = [_record("quantized", "colorization", 0, {"auc": 90.0, "auc_rebal": 60.0, "reference/gray/auc": 88.0,
                                                         "reference/gray/auc_rebal": 55.0})]
    md = make_table(records, layout="rows", references=["zhang2016"])
    assert _md_row(md, "*published: grayscale (zhang2016)*")[1:] == ["*89.1*", ""], \
        "Zhang's rebalanced AuC used ImageNet's prior: no column of ours corresponds"
    assert "AuC rebal: weighted by ImageNet's colour prior" in md
    assert "AlexNet's layers do not map onto the stages" in md


# ---------------------------------------------------------------------------------------------------------------
# Terminal


def test_terminal_table_never_truncates_names():
    long_name = "quantized-norebal-sigma10-lambda0p75-window7"
    records = [_record(long_name, "linear", 0, {f"layer/stage{i}/top1": 50.0 + i for i in range(1, 5)}
                       | {"best/top1": 54.0}, pretext="quantized", options={"rebalance": False}),
               _record("random", "linear", 0, {f"layer/stage{i}/top1": 10.0 for i in range(1, 5)}
                       | {"best/top1": 10.0})]
    table = build_table(records)
    for width in (60, 250):
        buffer = io.StringIO()
        console = Console(file=buffer, width=width, force_terminal=True, color_system=None)
        print_rich(table, console, fallback=lambda text: buffer.write(text))
        out = buffer.getvalue()
        assert long_name in out and "…" not in out
        assert all(len(line) <= width for line in out.splitlines() if line.startswith(("┃", "│"))), out
    assert "┃" in out and "54.0" in out


# ---------------------------------------------------------------------------------------------------------------
# Bootstrap intervals


def _loop_interval(arrays_per_seed, metric, resamples=1000, seed=0):
    """The interval by a plain loop over the same documented resamples."""
    n = len(next(iter(arrays_per_seed[0].values())))
    indices = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    stats = [np.mean([metric({k: v[idx] for k, v in a.items()}) for a in arrays_per_seed]) for idx in indices]
    return np.percentile(stats, [2.5, 97.5])


def _numpy_miou(confusion):
    tp = np.diag(confusion).astype(float)
    union = confusion.sum(0) + confusion.sum(1) - tp
    return 100.0 * np.mean(tp[union > 0] / union[union > 0])


def test_resample_indices_are_the_documented_draws():
    np.testing.assert_array_equal(resample_indices(7, 5, 3), np.random.default_rng(3).integers(0, 7, size=(5, 7)))


def test_bootstrap_all_correct_is_100_to_100():
    interval = bootstrap_interval([PerImage("mean", {"values": np.full(40, 100.0)})])
    assert (interval.estimate, interval.low, interval.high) == (100.0, 100.0, 100.0)


def test_bootstrap_matches_a_plain_loop_for_each_kind():
    rng = np.random.default_rng(7)
    n = 60
    correct = 100.0 * (rng.random(n) < 0.6)
    got = bootstrap_interval([PerImage("mean", {"values": correct})])
    np.testing.assert_allclose([got.low, got.high], _loop_interval([{"values": correct}], lambda a: a["values"].mean()))
    assert got.estimate == pytest.approx(correct.mean())

    ratio = {"num": rng.random(n) * 10, "den": rng.random(n) * 10 + 5}
    got = bootstrap_interval([PerImage("ratio", ratio)])
    np.testing.assert_allclose([got.low, got.high],
                               _loop_interval([ratio], lambda a: a["num"].sum() / a["den"].sum()))

    labels = rng.integers(0, 4, size=(n, 50))
    predictions = np.where(rng.random((n, 50)) < 0.7, labels, rng.integers(0, 4, size=(n, 50)))
    confusion = np.zeros((n, 4, 4), dtype=np.int64)
    for i in range(n):
        np.add.at(confusion[i], (labels[i], predictions[i]), 1)
    item = PerImage("confusion", {"confusion": confusion})
    assert metric_value(item) == pytest.approx(_numpy_miou(confusion.sum(0)))
    got = bootstrap_interval([item], resamples=200)
    np.testing.assert_allclose([got.low, got.high],
                               _loop_interval([{"confusion": confusion}], lambda a: _numpy_miou(a["confusion"].sum(0)),
                                              resamples=200))


def test_bootstrap_of_several_seeds_resamples_the_same_images():
    rng = np.random.default_rng(1)
    a, b = 100.0 * (rng.random(80) < 0.5), 100.0 * (rng.random(80) < 0.7)
    both = bootstrap_interval([PerImage("mean", {"values": a}), PerImage("mean", {"values": b})])
    averaged = bootstrap_interval([PerImage("mean", {"values": (a + b) / 2})])
    assert (both.low, both.high) == pytest.approx((averaged.low, averaged.high))
    assert both.estimate == pytest.approx((a.mean() + b.mean()) / 2)
    with pytest.raises(ValueError, match="same images"):
        bootstrap_interval([PerImage("mean", {"values": a}), PerImage("mean", {"values": a[:10]})])


def test_bootstrap_of_map_brackets_the_estimate():
    rng = np.random.default_rng(2)
    targets = (rng.random((50, 3)) < 0.4).astype(np.float32)
    scores = (targets + rng.normal(0, 0.8, size=targets.shape)).astype(np.float32)
    item = PerImage("ap", {"scores": scores, "targets": targets, "difficult": np.zeros_like(targets, dtype=bool)})
    got = bootstrap_interval([item], resamples=100)
    assert got.low < got.estimate < got.high and 0.0 <= got.low and got.high <= 100.0


def _with_sidecar(folder, record, arrays):
    path = _write(folder, record)
    np.savez(path.with_name(path.stem + ".per_image.npz"), **arrays)
    return path


def test_table_ci_cells_from_sidecars(tmp_path, capsys):
    rng = np.random.default_rng(3)
    seeds = [100.0 * (rng.random(50) < p) for p in (0.6, 0.7)]
    for seed, values in enumerate(seeds):
        _with_sidecar(tmp_path, _record("quantized", "linear", seed, {"best/top1": float(values.mean())}),
                      {"best/top1|mean|values": values})
        _with_sidecar(tmp_path, _record("supervised", "linear", seed, {"best/top1": 100.0}),
                      {"best/top1|mean|values": np.full(50, 100.0)})
        _write(tmp_path, _record("random", "linear", seed, {"best/top1": 10.0}))
    wrong = _with_sidecar(tmp_path, _record("cgan", "linear", 0, {"best/top1": 99.0}),
                          {"best/top1|mean|values": np.zeros(50)})
    assert main(["table", "--runs", str(tmp_path), "--ci"]) == 0
    out, err = capsys.readouterr()
    expected = bootstrap_interval([PerImage("mean", {"values": v}) for v in seeds])
    mean = (seeds[0].mean() + seeds[1].mean()) / 2
    assert _md_row(out, "quantized")[1] == f"{mean:.1f} [{expected.low:.1f}, {expected.high:.1f}] (n=2)"
    assert _md_row(out, "supervised")[1] == "100.0 [100.0, 100.0] (n=2)"
    assert _md_row(out, "random")[1] == "10.0 ± 0.0† (n=2)", "no per-image values: the cell says it has no interval"
    assert _md_row(out, "cgan")[1].strip("*") == "99.0† (n=1)"
    assert "no per-image values recorded" in out and "95 % bootstrap interval" in out
    assert str(wrong) in err and "per-image values give best/top1 = 0" in err
    assert math.isfinite(expected.low)


def test_metric_conventions_are_printed_under_the_table():
    records = [_record("quantized", "colorization", 0, {"auc": 90.0, "convention/auc": "trapezoid",
                                                         "convention/prior": "train"})]
    text = make_table(records, "md")
    assert "Metric conventions: colorization auc = trapezoid; colorization prior = train." in text
    assert "| convention" not in text


def test_a_protocol_name_selects_its_columns():
    records = [_record("regression", "linear", 0, {"best/top1": 40.0, "layer/stage1/top1": 30.0}),
               _record("regression", "colorization", 0, {"auc": 90.0, "psnr": 24.0})]
    table = build_table(records, ["colorization"])
    assert {(c.protocol, c.metric) for c in table.columns} == {("colorization", "auc"), ("colorization", "psnr")}
    narrowed = build_table(records, ["linear", "best/top1"])
    assert [(c.protocol, c.metric) for c in narrowed.columns] == [("linear", "best/top1")]
