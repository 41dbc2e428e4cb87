"""Run records (atomic, schema, skip logic) and the tables made from them."""

from __future__ import annotations

import json

import pytest

from sslbench.records import SCHEMA, flatten, load_records, nest, read_record, record_path, write_record
from sslbench.tables import make_table, summary_frame


def _record(pretext, protocol, seed, metrics, status="ok", dataset="synthetic", synthetic=True):
    return {"schema": SCHEMA, "pretext": pretext, "protocol": protocol, "dataset": dataset, "encoder": "vgg_small",
            "seed": seed, "status": status, "metrics": nest(metrics),
            "data": {"test": {"synthetic": synthetic}}}


def test_nest_and_flatten_round_trip():
    flat = {"layer/conv1/top1": 10.0, "layer/conv2/top1": 20.0, "best/top1": 20.0, "best/layer": "conv2"}
    nested = nest(flat)
    assert nested["layer"]["conv1"]["top1"] == 10.0 and nested["best"]["layer"] == "conv2"
    assert flatten(nested) == flat


def test_write_is_atomic_and_readable(tmp_path):
    path = record_path(tmp_path, dataset="cifar10", encoder="timm/resnet18", pretext="quantized",
                       protocol="linear", seed=1)
    write_record(path, {"pretext": "quantized", "metrics": {"a": 1.0}})
    assert path.name == "quantized__linear__seed1.json" and "timm-resnet18" in str(path)
    assert read_record(path)["metrics"] == {"a": 1.0}
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    path.write_text('{"schema": "sslbench.run/1", "truncat')
    assert read_record(path) is None
    assert load_records(tmp_path) == []


def test_summary_aggregates_seeds():
    records = [_record("random", "linear", s, {"best/top1": v}) for s, v in [(0, 10.0), (1, 20.0)]]
    summary = summary_frame(records)
    row = summary[summary["metric"] == "best/top1"].iloc[0]
    assert row["mean"] == pytest.approx(15.0) and row["std"] == pytest.approx(7.0710678) and row["n"] == 2


def test_markdown_latex_csv():
    records = [
        _record("supervised", "linear", 0, {"best/top1": 80.0, "layer/stage1/top1": 50.0}),
        _record("random", "linear", 0, {"best/top1": 30.0, "layer/stage1/top1": 25.0}),
        _record("quantized", "linear", 0, {"best/top1": 60.0, "layer/stage1/top1": 40.0}),
        _record("random", "colorization", 0, {}, status="skipped"),
    ]
    md = make_table(records, "md").splitlines()
    assert md[0].startswith("| dataset | encoder | pretext |") and "linear best/top1" in md[0]
    body = [line.split(" | ")[2] for line in md[2:5]]
    assert body == ["random", "quantized", "supervised"]
    assert "n/a" in md[2] and "synthetic" in md[-1]
    latex = make_table(records, "latex")
    assert r"\begin{tabular}" in latex and r"linear best/top1" in latex.replace(r"\_", "_")
    csv = make_table(records, "csv").splitlines()
    assert csv[0] == "dataset,encoder,pretext,protocol,metric,mean,std,n"
    assert any(line.startswith("synthetic,vgg_small,quantized,linear,best/top1,60.0") for line in csv)


def test_bookkeeping_is_hidden_unless_asked_for():
    records = [_record("random", "linear", 0, {"best/top1": 30.0, "layer/stage1/dims": 9248, "train/frozen_steps": 3})]
    header = make_table(records, "md").splitlines()[0]
    assert "best/top1" in header and "dims" not in header and "frozen_steps" not in header
    assert "layer/stage1/dims" in make_table(records, "md", metrics=["dims"]).splitlines()[0]


def test_table_of_failed_records_only():
    md = make_table([_record("regression", "linear", 0, {}, status="failed")], "md").splitlines()
    assert md[2].split(" | ")[2:] == ["regression", "failed |"]


def test_metric_filter():
    records = [_record("random", "linear", 0, {"best/top1": 30.0, "layer/stage1/top1": 25.0})]
    header = make_table(records, "md", metrics=["best/top1"]).splitlines()[0]
    assert "best/top1" in header and "stage1" not in header


def test_records_written_by_cli_are_valid_json(tmp_path):
    path = tmp_path / "x.json"
    write_record(path, {"pretext": "p", "metrics": {"m": float("nan")}})
    assert json.loads(path.read_text())["schema"] == SCHEMA
