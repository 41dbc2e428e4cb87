"""The ``semantic`` protocol on real CIFAR-10: a judge trained here, its cache, a judge from a local weights file, and
the acceptance run through the CLI (``colorization`` and ``semantic`` together)."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from torch.nn import functional as F

from sslbench.cli import main
from sslbench.config import resolve_options
from sslbench.datasets import create_dataset
from sslbench.errors import DataError
from sslbench.pretext import DataInfo, EncoderSpec
from sslbench.progress import Progress
from sslbench.protocol import EvalData
from sslbench.protocols._judge import IMAGENET_MEAN, IMAGENET_STD, JudgeConfig, Judge, get_judge
from sslbench.registry import PRETEXTS, PROTOCOLS
from sslbench.runtime import Runtime, seed_everything
from sslbench.tables import make_table

JUDGE = {"judge_width_mult": "0.5", "judge_epochs": "3", "judge_batch_size": "50", "judge_lr": "0.002",
         "judge_augment": "false"}


@pytest.fixture(scope="module")
def cifar(shared_data, one_thread):
    root = shared_data / "cifar10"
    return (create_dataset("cifar10", root=root, split="train", subset=1000),
            create_dataset("cifar10", root=root, split="test", subset=500))


@pytest.fixture(scope="module")
def pretext():
    seed_everything(0)
    cls = PRETEXTS.get("regression")
    model = cls(cls.Config(), EncoderSpec("vgg_small", {"width_mult": 0.25}, 32), DataInfo("cifar10", 32, 10))
    return model.eval()


def _evaluate(options, data, pretext):
    cls = PROTOCOLS.get("semantic")
    protocol = cls(resolve_options(cls.Config, options, "semantic"))
    return protocol.evaluate(pretext, data, Runtime("cpu"), Progress.disabled())


def test_trained_judge_prefers_colour_and_is_cached(cifar, pretext, tmp_path):
    train, test = cifar
    data = EvalData(train=train, test=test, batch_size=250, seed=0, cache_dir=str(tmp_path / "features" / "abc"))
    first = _evaluate(JUDGE, data, pretext)
    assert first["judge/source"] == "trained"
    assert first["reference/ground_truth/top1"] > 20.0  # chance is 10
    assert first["reference/ground_truth/top1"] > first["reference/gray/top1"] + 2.0
    assert 0.0 <= first["top1"] <= 100.0

    files = list((tmp_path / "judges").glob("*/judge.pt"))
    assert len(files) == 1 and files[0].parent.name == first["judge/hash"]
    stamp = files[0].stat().st_mtime_ns
    other = EvalData(train=train, test=test, batch_size=250, seed=0, cache_dir=str(tmp_path / "features" / "def"))
    second = _evaluate(JUDGE, other, pretext)
    assert second["judge/source"] == "cache" and files[0].stat().st_mtime_ns == stamp
    assert second == {**first, "judge/source": "cache"}
    assert list((tmp_path / "judges").glob("*/judge.pt")) == files


def test_judge_training_is_deterministic_by_seed(cifar, tmp_path):
    train, test = cifar
    small = create_dataset("cifar10", root=train.root, split="train", subset=100)
    cfg = JudgeConfig(judge_width_mult=0.25, judge_epochs=1, judge_batch_size=50)
    states = []
    for seed, folder in ((0, "a"), (0, "b"), (1, "c")):
        data = EvalData(train=small, test=test, seed=seed, cache_dir=str(tmp_path / folder))
        judge, info = get_judge(cfg, data, Runtime("cpu"), Progress.disabled())
        assert info["source"] == "trained"
        states.append(judge.network.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_judge_from_local_timm_weights_matches_in_memory_model(cifar, pretext, tmp_path):
    train, test = cifar
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(3):
        items = [train[i] for i in range(step * 32, step * 32 + 32)]
        x = (torch.stack([it["image"] for it in items]).float() / 255.0 - mean) / std
        loss = F.cross_entropy(model(x), torch.tensor([it["label"] for it in items]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    path = tmp_path / "resnet18.pt"
    torch.save(model.state_dict(), path)

    eval_set = create_dataset("cifar10", root=test.root, split="test", subset=100)
    data = EvalData(train=train, test=eval_set, batch_size=100, seed=0, cache_dir=str(tmp_path / "features" / "x"))
    options = {"judge_model": "timm/resnet18", "judge_weights": str(path)}
    cfg = resolve_options(PROTOCOLS.get("semantic").Config, options, "semantic")
    judge, info = get_judge(cfg, data, Runtime("cpu"), Progress.disabled())
    assert info["source"] == "weights"
    rgb = torch.stack([eval_set[i]["image"] for i in range(100)]).float() / 255.0
    labels = torch.tensor([eval_set[i]["label"] for i in range(100)])
    with torch.no_grad():
        expected = model((rgb - mean) / std)
        got = judge(rgb)
    torch.testing.assert_close(got, expected)
    metrics = _evaluate(options, data, pretext)
    accuracy = 100.0 * (expected.argmax(1) == labels).float().mean().item()
    assert metrics["reference/ground_truth/top1"] == pytest.approx(accuracy)
    assert not (tmp_path / "judges").exists()

    # A class map picks (and reorders) the judge's classes: dataset class i <- judge class perm[i].
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    mapped = Judge(judge.network, class_map=[[int(p)] for p in perm]).eval()
    with torch.no_grad():
        torch.testing.assert_close(mapped(rgb), expected[:, perm])

    with pytest.raises(DataError, match="missing.pt"):
        _evaluate({**options, "judge_weights": str(tmp_path / "missing.pt")}, data, pretext)


def test_cli_acceptance_colorization_and_semantic(shared_data, tmp_path, capsys, one_thread):
    out, cache = tmp_path / "runs", tmp_path / "cache"
    code = main(["run", "--pretext", "regression", "--protocol", "colorization,semantic", "--dataset", "cifar10",
                 "--data-root", str(shared_data / "cifar10"), "--subset", "300", "--eval-subset", "200",
                 "--steps", "2", "--batch-size", "32", "--device", "cpu", "--quiet", "--out", str(out),
                 "--cache-dir", str(cache), "--set", "encoder.width_mult=0.25",
                 "--set", "semantic.judge_width_mult=0.25", "--set", "semantic.judge_epochs=1"])
    assert code == 0, capsys.readouterr().err
    records = {p.name: json.loads(p.read_text()) for p in out.rglob("*.json")}
    colour = records["regression__colorization__seed0.json"]
    semantic = records["regression__semantic__seed0.json"]
    assert colour["status"] == "ok" and semantic["status"] == "ok"
    cm, sm = colour["metrics"], semantic["metrics"]
    for key in ("auc", "auc_rebal", "psnr", "ssim", "colourfulness"):
        assert isinstance(cm[key], float) and isinstance(cm["reference"]["gray"][key], float)
    assert cm["reference"]["ground_truth"]["colourfulness"] > cm["reference"]["gray"]["colourfulness"]
    for top1 in (sm["top1"], sm["reference"]["gray"]["top1"], sm["reference"]["ground_truth"]["top1"]):
        assert 0.0 <= top1 <= 100.0
    assert (cache / "judges").is_dir() and (cache / "priors").is_dir()
    table = make_table(records.values())
    for column in ("colorization / auc", "colorization / gray auc_rebal", "semantic / top1",
                   "semantic / gray top1", "semantic / ground_truth top1"):
        assert column in table
