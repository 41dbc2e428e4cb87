"""The run plan: experiment files, variants, splits and hashes that change exactly when what they cover changes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from sslbench.errors import UsageError
from sslbench.experiment import DatasetSpec, Experiment, VariantSpec, apply_settings, load_experiment
from sslbench.plan import resolve_plan
from sslbench.records import strict_json, write_record

TINY = ["--steps", "2", "--subset", "64", "--eval-subset", "64", "--set", "encoder.width_mult=0.25",
        "--device", "cpu", "--quiet"]


def _cli(args: list[str], cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SSLBENCH_CACHE": str(cwd / "cache")}
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    return subprocess.run([sys.executable, "-m", "sslbench", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=900)


def _records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("*__seed*.json"))]


def _plan(exp: Experiment, tmp_path: Path):
    return resolve_plan(exp, tmp_path / "cache")


def _hashes(exp: Experiment, tmp_path: Path) -> dict[str, str]:
    return {unit.variant.name: unit.checkpoint_hash for unit in _plan(exp, tmp_path).units}


EXPERIMENT = """
name = "regression-losses"
seeds = [0]
out = "runs"

[budget]
steps = 2
batch_size = 32

[datasets.synthetic]
subset = 64
eval_subset = 64

[encoders.vgg_small]
width_mult = 0.25

[protocols.linear]
epochs = 1

[variants.random]
[variants.regression]
[variants.regression-l1]
pretext = "regression"
loss = "l1"
"""


def test_two_variants_of_one_pretext_get_their_own_records_and_checkpoints(tmp_path):
    (tmp_path / "exp.toml").write_text(EXPERIMENT)
    result = _cli(["run", "--config", "exp.toml", "--device", "cpu", "--quiet"], tmp_path)
    assert result.returncode == 0, result.stderr
    records = {r["variant"]: r for r in _records(tmp_path / "runs")}
    assert set(records) == {"random", "regression", "regression-l1"}
    assert records["regression-l1"]["pretext"] == records["regression"]["pretext"] == "regression"
    assert records["regression-l1"]["variant_options"] == {"loss": "l1"}
    assert records["regression"]["variant_options"] == {}
    assert records["regression-l1"]["experiment"] == "regression-losses"
    assert records["regression-l1"]["config_hash"] != records["regression"]["config_hash"]
    assert records["regression-l1"]["pretext_hash"] != records["regression"]["pretext_hash"]
    assert len(list((tmp_path / "cache" / "checkpoints").rglob("final.pt"))) == 2
    assert {"manifest.json", "run.log", "table.md"} <= {p.name for p in (tmp_path / "runs").iterdir()}
    manifest = json.loads((tmp_path / "runs" / "manifest.json").read_text())
    assert manifest["plan"]["experiment"] == "regression-losses" and manifest["wall_s"] > 0
    assert manifest["outcome"]["trained"] and manifest["hardware"]["cpu_count"] == os.cpu_count()

    again = _cli(["run", "--config", "exp.toml", "--device", "cpu", "--quiet"], tmp_path)
    assert again.returncode == 0 and "0 evaluated, 3 already recorded" in again.stderr


def test_experiment_file_and_flags_build_the_same_plan(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(EXPERIMENT)
    exp = load_experiment(path)
    assert [v.name for v in exp.variants] == ["random", "regression", "regression-l1"]
    assert exp.out == tmp_path / "runs" and exp.budget.steps == 2
    flags = Experiment(variants=[VariantSpec("random", "random"), VariantSpec("regression", "regression"),
                                 VariantSpec("regression-l1", "regression", {"loss": "l1"})],
                       datasets=[DatasetSpec("synthetic", subset=64, eval_subset=64)],
                       encoders={"vgg_small": {"width_mult": "0.25"}}, protocols={"linear": {"epochs": "1"}})
    flags.budget.steps, flags.budget.batch_size = 2, 32
    from_file, from_flags = _plan(exp, tmp_path), _plan(flags, tmp_path)
    assert [u.checkpoint_hash for u in from_file.units] == [u.checkpoint_hash for u in from_flags.units]
    assert [e.hash for u in from_file.units for e in u.evaluations] == \
        [e.hash for u in from_flags.units for e in u.evaluations]


def test_set_reaches_every_variant_of_a_pretext_or_one_variant(tmp_path):
    exp = Experiment(variants=[VariantSpec("regression", "regression"),
                               VariantSpec("regression-l1", "regression", {"loss": "l1"})])
    apply_settings(exp, [("regression", "lr", "0.01"), ("regression-l1", "huber_delta", "0.5")])
    plan = _plan(exp, tmp_path)
    lrs = {v.name: v.options["lr"] for v in plan.variants}
    assert lrs == {"regression": 0.01, "regression-l1": 0.01}
    assert plan.variants[1].differs == {"loss": "l1", "lr": 0.01, "huber_delta": 0.5}


def test_hashes_cover_resolved_values_not_the_strings_typed(tmp_path):
    plain = Experiment(variants=[VariantSpec("regression", "regression")])
    spelled = Experiment(variants=[VariantSpec("regression", "regression")])
    apply_settings(spelled, [("regression", "loss", "l2"), ("encoder", "width_mult", "1"),
                             ("synthetic", "num_test", "500")])
    assert _hashes(plain, tmp_path) == _hashes(spelled, tmp_path)
    changed = Experiment(variants=[VariantSpec("regression", "regression")])
    apply_settings(changed, [("encoder", "width_mult", "0.5")])
    assert _hashes(changed, tmp_path) != _hashes(plain, tmp_path)


@pytest.mark.parametrize("setting, message", [
    ("synthetic.bogus=1", "dataset 'synthetic' has no option 'bogus'; valid options: max_objects"),
    ("synthetic.split=test", "the split is not a dataset option"),
    ("encoder.depth=3", "encoder 'vgg_small' has no option 'depth'"),
    ("nobody.lr=1", "'nobody' is none of this run's"),
])
def test_bad_options_are_usage_errors(tmp_path, setting, message):
    result = _cli(["run", "--pretext", "random", "--set", setting, "--dry-run"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_evaluating_on_a_training_split_is_refused_unless_allowed(tmp_path):
    refused = _cli(["run", "--pretext", "random", "--eval-split", "train", "--dry-run"], tmp_path)
    assert refused.returncode == 2 and "also a training split" in refused.stderr
    probe_on_test = _cli(["run", "--pretext", "random", "--probe-split", "test", "--dry-run"], tmp_path)
    assert probe_on_test.returncode == 2 and "--allow-eval-on-train" in probe_on_test.stderr
    allowed = _cli(["run", "--pretext", "random", "--protocol", "linear", "--eval-split", "train",
                    "--allow-eval-on-train", "--out", "runs", "--set", "linear.epochs=1", *TINY], tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    (record,) = _records(tmp_path / "runs")
    assert record["config"]["allow_eval_on_train"] is True and record["plan"]["eval_on_train"] is True
    assert record["plan"]["eval_split"] == "train"


def test_dry_run_prints_the_plan_and_does_nothing(tmp_path):
    result = _cli(["run", "--pretext", "random,regression", "--out", "runs", "--dry-run"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"regression seed 0 \(synthetic, vgg_small\): train checkpoint [0-9a-f]{16}; linear: evaluate",
                     result.stdout)
    assert "random seed 0 (synthetic, vgg_small): untrained; linear: evaluate" in result.stdout
    assert "pretext split train (2000 images), probe split train (2000), eval split test (500)" in result.stdout
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def _imagefolder(root: Path, cifar: Path, per_class: int = 4) -> Path:
    """A real image folder with train/val/test splits, from CIFAR-10 JPEGs."""
    for split, offset in (("train", 0), ("val", 100), ("test", 200)):
        for cls in ("cat", "ship"):
            target = root / split / cls
            target.mkdir(parents=True)
            for path in sorted((cifar / "train" / cls).iterdir())[offset:offset + per_class]:
                shutil.copy(path, target / path.name)
    return root


def test_changed_data_gives_a_new_checkpoint_and_record(tmp_path, shared_data):
    root = _imagefolder(tmp_path / "folder", shared_data / "cifar10")
    exp = Experiment(variants=[VariantSpec("regression", "regression")],
                     datasets=[DatasetSpec("imagefolder", data_root=str(root))])
    before = _plan(exp, tmp_path).units[0]
    victim = next((root / "train" / "cat").iterdir())
    Image.open(next((root / "train" / "ship").iterdir())).save(victim)
    after_train = _plan(exp, tmp_path).units[0]
    assert after_train.checkpoint_hash != before.checkpoint_hash
    victim = next((root / "val" / "cat").iterdir())
    Image.open(next((root / "val" / "ship").iterdir())).save(victim)
    after_eval = _plan(exp, tmp_path).units[0]
    assert after_eval.checkpoint_hash == after_train.checkpoint_hash
    assert after_eval.evaluations[0].hash != after_train.evaluations[0].hash


def test_joined_splits_pretrain_on_both(tmp_path, shared_data):
    root = _imagefolder(tmp_path / "folder", shared_data / "cifar10")
    exp = Experiment(variants=[VariantSpec("regression", "regression")],
                     datasets=[DatasetSpec("imagefolder", data_root=str(root), pretext_split="train+val",
                                           eval_split="test", image_size=32)])
    plan = _plan(exp, tmp_path)
    dataset = plan.datasets[0]
    assert len(dataset.pretext_data) == 16 and len(dataset.probe_data) == 8 and len(dataset.eval_data) == 8
    assert plan.units[0].run_config["pretext_split"] == "train+val"
    item = dataset.pretext_data[12]
    assert set(item) == {"image", "label"} and item["image"].shape == (3, 32, 32)
    bad = Experiment(variants=[VariantSpec("regression", "regression")],
                     datasets=[DatasetSpec("imagefolder", data_root=str(root), pretext_split="train+nope")])
    with pytest.raises(UsageError, match="has no split 'train\\+nope'"):
        _plan(bad, tmp_path)


PLUGIN = '''
from dataclasses import dataclass

from torch.nn import functional as F

from sslbench.colour import normalize_l, rgb_to_lab
from sslbench.pretext import Pretext, images_to_rgb


@dataclass
class Config:
    lr: float = {lr}


class Demo(Pretext):
    """A pretext whose code the test edits."""

    Config = Config
    version = {version}

    def __init__(self, config, encoder, data):
        super().__init__(config, encoder, data)
        self.encoder = encoder.build(in_chans=1)

    def compute_loss(self, batch):
        lab = rgb_to_lab(images_to_rgb(batch["image"]))
        return self.encoder(normalize_l(lab[:, :1]))[-1].mean() ** 2, {{}}
'''


def _install_plugin(site: Path, *, lr: str, version: int, dist_version: str) -> None:
    (site / "hashdemo_plugin.py").write_text(PLUGIN.format(lr=lr, version=version))
    for old in site.glob("*.dist-info"):
        shutil.rmtree(old)
    info = site / f"hashdemo_plugin-{dist_version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: hashdemo-plugin\nVersion: {dist_version}\n")
    (info / "entry_points.txt").write_text("[sslbench.pretexts]\nhashdemo = hashdemo_plugin:Demo\n")


def _planned_hash(tmp_path: Path, site: Path) -> str:
    result = _cli(["run", "--pretext", "hashdemo", "--dry-run"], tmp_path, extra_path=site)
    assert result.returncode == 0, result.stderr
    return re.search(r"train checkpoint ([0-9a-f]{16})", result.stdout).group(1)


def test_plugin_default_version_and_distribution_changes_give_new_checkpoints(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _install_plugin(site, lr="1e-3", version=1, dist_version="0.1.0")
    first = _planned_hash(tmp_path, site)
    assert _planned_hash(tmp_path, site) == first
    _install_plugin(site, lr="3e-4", version=1, dist_version="0.1.0")
    new_default = _planned_hash(tmp_path, site)
    _install_plugin(site, lr="3e-4", version=2, dist_version="0.1.0")
    new_version = _planned_hash(tmp_path, site)
    _install_plugin(site, lr="3e-4", version=2, dist_version="0.2.0")
    new_dist = _planned_hash(tmp_path, site)
    assert len({first, new_default, new_version, new_dist}) == 4


def test_force_clears_checkpoints_and_feature_caches(tmp_path):
    args = ["run", "--pretext", "regression", "--protocol", "linear", "--out", "runs",
            "--set", "linear.cache_features=true", "--set", "linear.epochs=1", *TINY]
    assert _cli(args, tmp_path).returncode == 0
    features = [p for p in (tmp_path / "cache" / "features").rglob("*.pt")]
    assert features
    (final,) = (tmp_path / "cache" / "checkpoints").rglob("final.pt")
    marker = features[0].parent / "stale-marker"
    marker.write_text("left by an earlier run")
    final_mtime = final.stat().st_mtime_ns
    forced = _cli(args + ["--force"], tmp_path)
    assert forced.returncode == 0 and "1 evaluated, 0 already recorded" in forced.stderr
    assert not marker.exists() and features[0].exists()
    assert final.stat().st_mtime_ns != final_mtime


def test_records_are_strict_json_with_null_for_non_finite(tmp_path):
    path = tmp_path / "r.json"
    write_record(path, {"metrics": {"top1": float("nan"), "layer": {"a": float("inf"), "b": 1.5}}, "status": "failed"})

    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    record = json.loads(path.read_text(), parse_constant=refuse)
    assert record["metrics"] == {"top1": None, "layer": {"a": None, "b": 1.5}}
    assert strict_json([float("-inf"), 2.0]) == [None, 2.0]


def test_variant_names_must_be_file_safe(tmp_path):
    (tmp_path / "exp.toml").write_text(textwrap.dedent("""
        [protocols.linear]
        [variants."a/b"]
        pretext = "regression"
    """))
    result = _cli(["run", "--config", "exp.toml", "--dry-run"], tmp_path)
    assert result.returncode == 2 and "variant name 'a/b'" in result.stderr


def test_experiment_file_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text("[protocols.linear]\n[variants.random]\n[budgett]\nsteps = 1\n")
    result = _cli(["run", "--config", "exp.toml", "--dry-run"], tmp_path)
    assert result.returncode == 2 and "exp.toml: unknown key(s) budgett" in result.stderr
    path.write_text("[protocols.linear]\n[variants.random]\n")
    combined = _cli(["run", "--config", "exp.toml", "--pretext", "regression", "--dry-run"], tmp_path)
    assert combined.returncode == 2 and "--pretext cannot be combined with --config" in combined.stderr


def test_variants_that_differ_only_at_inference_share_a_checkpoint(tmp_path):
    exp = Experiment(variants=[VariantSpec("quantized", "quantized"),
                               VariantSpec("quantized-T1", "quantized", {"temperature": 1.0}),
                               VariantSpec("quantized-norebal", "quantized", {"rebalance": False})])
    units = {u.variant.name: u for u in _plan(exp, tmp_path).units}
    assert units["quantized-T1"].checkpoint_hash == units["quantized"].checkpoint_hash
    assert units["quantized-norebal"].checkpoint_hash != units["quantized"].checkpoint_hash
    assert units["quantized-T1"].evaluations[0].hash != units["quantized"].evaluations[0].hash
    assert units["quantized-T1"].evaluations[0].config["inference_options"] == {"temperature": 1.0}


def test_a_plugin_refusing_an_option_value_is_a_usage_error_before_any_work(tmp_path, capsys):
    """Pretexts and encoder factories refuse values with ValueError in their constructors (the cGAN's ab_scale,
    unet's norm): the run stops with exit 2 and the plugin's own message while the plan resolves, before a
    checkpoint or record exists."""
    from sslbench.cli import main

    common = ["run", "--protocol", "linear", "--subset", "32", "--eval-subset", "16", "--out", str(tmp_path / "runs"),
              "--cache-dir", str(tmp_path / "cache")]
    assert main(common + ["--pretext", "cgan", "--set", "cgan.ab_scale=-1"]) == 2
    err = capsys.readouterr().err
    assert "pretext 'cgan'" in err and "ab_scale must be > 0" in err and "Traceback" not in err
    assert main(common + ["--pretext", "regression", "--encoder", "unet", "--set", "encoder.norm=bad"]) == 2
    assert "norm must be one of" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.json"))
    assert not (tmp_path / "cache" / "checkpoints").exists()
