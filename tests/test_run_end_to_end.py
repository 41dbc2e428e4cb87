"""``sslbench run`` end to end: real training, real protocols, real records, kills and NaNs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from sslbench.cli import main
from sslbench.experiment import DatasetSpec, Experiment, VariantSpec
from sslbench.plan import resolve_plan
from sslbench.runner import run


def _records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("*__seed*.json"))]


def _best(records: list[dict], pretext: str, seed: int) -> float:
    (record,) = [r for r in records if r["pretext"] == pretext and r["seed"] == seed]
    assert record["status"] == "ok", record.get("reason")
    return record["metrics"]["best"]["top1"]


def test_regression_beats_random_on_synthetic_over_two_seeds(tmp_path):
    """The first end-to-end slice: colorization by regression learns more than an untrained encoder.

    150 steps (10 epochs of 1000 images): measured 54.5 vs 40.3 (seed 0) and 54.8 vs 39.8 (seed 1) best-stage top-1;
    at 60 steps regression had not yet overtaken the untrained encoder's strong random features."""
    exp = Experiment(variants=[VariantSpec("random", "random"), VariantSpec("regression", "regression")],
                     protocols={"linear": {}}, datasets=[DatasetSpec("synthetic", subset=1000, eval_subset=400)],
                     seeds=[0, 1], device="cpu", out=tmp_path / "runs")
    exp.budget.epochs, exp.budget.eval_epochs = 10.0, 20.0
    outcome = run(resolve_plan(exp, tmp_path / "cache"))
    records = _records(tmp_path / "runs")
    assert len(records) == 4 and not outcome.failed
    for seed in (0, 1):
        assert _best(records, "regression", seed) > _best(records, "random", seed)
    regression = next(r for r in records if r["pretext"] == "regression")
    first, last = regression["train"]["first_losses"]["loss"], regression["train"]["last_losses"]["loss"]
    assert last < first
    assert set(regression["metrics"]["layer"]) == {"stage1", "stage2", "stage3", "stage4"}
    assert torch.__version__.startswith(regression["env"]["torch"])
    assert {"python", "torchvision", "timm", "numba", "device", "git_commit", "command"} <= set(regression["env"])
    assert regression["env"]["numba"] is not None
    assert regression["config"]["pretext_run"]["pretext_options"]["loss"] == "l2"
    assert regression["data"]["pretext"]["synthetic"] is True


def test_cifar10_real_images_end_to_end(tmp_path, shared_data, capsys):
    code = main(["run", "--pretext", "regression", "--protocol", "linear", "--dataset", "cifar10",
                 "--data-root", str(shared_data / "cifar10"), "--subset", "300", "--eval-subset", "200",
                 "--epochs", "2", "--eval-epochs", "5", "--device", "cpu", "--out", str(tmp_path / "runs"),
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    (record,) = _records(tmp_path / "runs")
    assert record["status"] == "ok" and record["dataset"] == "cifar10"
    assert record["counts"] == {"train_images": 300, "probe_images": 300, "eval_images": 200}
    assert 0.0 <= record["metrics"]["best"]["top1"] <= 100.0
    assert record["data"]["pretext"]["synthetic"] is False
    assert record["train"]["steps"] == 8  # 2 epochs of 300 images at batch 64: 4 full batches each
    assert "regression" in out and "linear (top1) / best" in out


def test_rerun_skips_recorded_work_and_force_redoes_it(tmp_path, capsys):
    argv = ["run", "--pretext", "random,regression", "--protocol", "linear", "--steps", "4", "--subset", "128",
            "--eval-subset", "64", "--eval-epochs", "1", "--device", "cpu", "--out", str(tmp_path / "runs"),
            "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(argv) == 0
    first = {r["pretext"]: r["env"]["created"] for r in _records(tmp_path / "runs")}
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "0 evaluated, 2 already recorded" in err and "trained: none" in err
    assert {r["pretext"]: r["env"]["created"] for r in _records(tmp_path / "runs")} == first
    assert main(argv + ["--set", "regression.loss=l1"]) == 0
    assert "1 evaluated, 1 already recorded" in capsys.readouterr().err
    assert main(argv + ["--force"]) == 0
    assert "2 evaluated, 0 already recorded" in capsys.readouterr().err


def _cli_process(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sslbench", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_killed_run_resumes_to_identical_weights(tmp_path):
    """SIGKILL during training, rerun: training resumes from the last checkpoint and ends where an uninterrupted
    run ends, bit for bit; nothing half-written is left behind."""
    common = ["run", "--pretext", "supervised", "--protocol", "linear", "--steps", "60", "--checkpoint-every", "3",
              "--subset", "256", "--eval-subset", "64", "--eval-epochs", "1", "--device", "cpu", "--quiet",
              "--set", "encoder.width_mult=0.25"]
    reference = _cli_process(common + ["--out", "ref/runs", "--cache-dir", "ref/cache"], tmp_path)
    assert reference.wait(timeout=600) == 0, reference.stderr.read()

    args = common + ["--out", "killed/runs", "--cache-dir", "killed/cache"]
    victim = _cli_process(args, tmp_path)
    deadline = time.time() + 300
    while not list((tmp_path / "killed" / "cache").rglob("last.pt")):
        assert victim.poll() is None, "the run finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not list((tmp_path / "killed").rglob("final.pt"))
    assert not list((tmp_path / "killed").rglob("*.json")) or all(
        json.loads(p.read_text()) for p in (tmp_path / "killed").rglob("*.json"))
    assert not list((tmp_path / "killed").rglob("*.tmp"))

    resumed = _cli_process(args, tmp_path)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    (final_ref,) = (tmp_path / "ref" / "cache").rglob("final.pt")
    (final_resumed,) = (tmp_path / "killed" / "cache").rglob("final.pt")
    ref_state = torch.load(final_ref, weights_only=False)
    resumed_state = torch.load(final_resumed, weights_only=False)
    assert resumed_state["summary"]["resumed_from_step"] > 0
    assert resumed_state["step"] == 60
    for key, value in ref_state["state_dict"].items():
        assert torch.equal(value, resumed_state["state_dict"][key]), key
    (record,) = _records(tmp_path / "killed" / "runs")
    assert record["status"] == "ok"
    # Training statistics add up over both processes: 60 steps of 64 images, one resume.
    assert record["train"]["steps"] == 60 and record["train"]["images"] == 60 * 64
    assert record["train"]["sessions"] == 2 and len(record["train"]["resumes"]) == 1
    assert record["train"]["resumes"][0]["step"] == resumed_state["summary"]["resumed_from_step"]
    assert record["train"]["wall_s"] > 0 and record["train"]["history"][-1]["step"] == 60
    again = _cli_process(args, tmp_path)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0 and "0 evaluated, 1 already recorded" in err


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path, capsys):
    code = main(["run", "--pretext", "regression", "--protocol", "linear", "--steps", "50", "--checkpoint-every", "1",
                 "--subset", "128", "--eval-subset", "64", "--eval-epochs", "1", "--device", "cpu",
                 "--set", "regression.lr=1e30", "--out", str(tmp_path / "runs"),
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert code == 1
    (record,) = _records(tmp_path / "runs")
    assert record["status"] == "failed"
    assert "not finite" in record["reason"] and "last good checkpoint (step" in record["reason"]
    (kept,) = (tmp_path / "cache").rglob("last.pt")
    state = torch.load(kept, weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert not list((tmp_path / "cache").rglob("final.pt"))
