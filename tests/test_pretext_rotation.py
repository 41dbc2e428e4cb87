"""``rotation`` (Gidaris et al. 2018, RotNet) on real CIFAR-10 images: the four rotations against PIL's, learning
(overfitting a fixed batch through the real trainer), RGB input and the encoder's taps, determinism, the square-image
check, and both non-colour pretexts through a real ``sslbench run``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslbench.checkpoints import CheckpointStore
from sslbench.colour import lab_to_rgb, rgb_to_lab
from sslbench.config import TrainBudget
from sslbench.datasets import create_dataset
from sslbench.errors import UsageError
from sslbench.pretext import DataInfo, EncoderSpec, images_to_rgb
from sslbench.pretexts.rotation import Rotation, RotationConfig, rotate_batch
from sslbench.progress import Progress
from sslbench.registry import PRETEXTS
from sslbench.runtime import Runtime, seed_everything
from sslbench.trainer import load_trained, train_pretext

SPEC = EncoderSpec("vgg_small", {"width_mult": 0.5}, 32)
INFO = DataInfo("cifar10", 32, 10)
#: PIL's counter-clockwise rotations, an implementation independent of torch.rot90.
PIL_ROTATIONS = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(shared_data: Path):
    return create_dataset("cifar10", root=shared_data / "cifar10", split="test", subset=64)


def _batch(dataset, n: int) -> torch.Tensor:
    return torch.stack([dataset[i]["image"] for i in range(n)])


def _pil_rotated(image: torch.Tensor, k: int) -> torch.Tensor:
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    if PIL_ROTATIONS[k] is not None:
        pil = pil.transpose(PIL_ROTATIONS[k])
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)


def _train(dataset, tmp: Path, seed: int, steps: int, batch_size: int):
    seed_everything(seed)
    pretext = Rotation(RotationConfig(), SPEC, INFO)
    store = CheckpointStore(tmp, "rotation", f"s{seed}-{steps}")
    summary = train_pretext(pretext, dataset, Runtime("cpu"), TrainBudget(steps=steps, batch_size=batch_size),
                            store, seed, Progress.disabled(), log_every=1)
    return pretext, store, summary


def test_registered() -> None:
    assert PRETEXTS.get("rotation") is Rotation
    assert not Rotation(RotationConfig(), SPEC, INFO).can_colorize


def test_four_rotations_match_pil_and_each_other(images) -> None:
    batch = _batch(images, 6)
    rotated, targets = rotate_batch(batch)
    n = len(batch)
    assert rotated.shape == (4 * n, 3, 32, 32) and rotated.dtype == torch.uint8
    assert targets.tolist() == [k for k in range(4) for _ in range(n)]
    for k in range(4):
        for i in range(n):
            assert torch.equal(rotated[k * n + i], _pil_rotated(batch[i], k)), (k, i)
    blocks = rotated.view(4, n, 3, 32, 32)
    assert torch.equal(blocks[0], batch)
    assert torch.equal(blocks[2], batch.flip(-1).flip(-2))       # 180° is both flips
    assert torch.equal(blocks[3], blocks[1].flip(-1).flip(-2))   # 270° is 90° then 180°
    assert torch.equal(blocks[1], batch.transpose(-2, -1).flip(-2))  # 90° counter-clockwise: transpose, flip rows
    assert not torch.equal(blocks[1], blocks[3])


def test_overfits_a_fixed_batch_and_reloads(images, tmp_path: Path) -> None:
    """24 steps on the same 8 real images (32 rotated ones) drive the 4-way loss from chance (ln 4) to a tenth of it:
    the head learns the rotations (measured: about 0.01 at step 24)."""
    fixed = torch.utils.data.Subset(images, range(8))
    pretext, store, summary = _train(fixed, tmp_path, seed=0, steps=24, batch_size=8)
    losses = [h["loss"] for h in summary.history]
    assert abs(losses[0] - math.log(4)) < 0.5, losses[0]
    assert sum(losses[-5:]) / 5 < 0.1 * math.log(4), losses
    assert summary.history[-1]["train_top1"] == 1.0

    pretext.eval()
    fresh = Rotation(RotationConfig(), SPEC, INFO)
    load_trained(fresh, store, Runtime("cpu"))
    fresh.eval()
    rgb = images_to_rgb(_batch(images, 8))
    rotated, targets = rotate_batch(_batch(images, 8))
    with torch.no_grad():
        for a, b in zip(pretext.representation()(rgb), fresh.representation()(rgb)):
            assert torch.equal(a, b)
        assert torch.equal(pretext.logits(rotated), fresh.logits(rotated))
        fresh.train()  # batch statistics, as in training: the reloaded head still tells the rotations apart
        assert (fresh.logits(rotated).argmax(1) == targets).float().mean() >= 0.9


def test_sees_rgb_through_the_encoders_own_taps(images) -> None:
    torch.manual_seed(0)
    pretext = Rotation(RotationConfig(), SPEC, INFO).eval()
    rep = pretext.representation()
    assert pretext.encoder.in_chans == 3
    colour_encoder = SPEC.build(in_chans=1)  # what the colorization pretexts probe
    assert [(t.name, t.channels, t.stride) for t in rep.taps] == \
        [(t.name, t.channels, t.stride) for t in colour_encoder.taps]

    rgb = images_to_rgb(_batch(images, 4))
    with torch.no_grad():
        maps = rep(rgb)
        reference = pretext.encoder(rgb * 2 - 1)
        lab = rgb_to_lab(rgb)
        recoloured = lab_to_rgb(torch.cat([lab[:, :1], -0.5 * lab[:, 1:]], dim=1))  # same L, other colours
        other = rep(recoloured)
    assert len(maps) == len(rep.taps)
    for tap, fmap, ref, changed in zip(rep.taps, maps, reference, other):
        assert fmap.shape[1] == tap.channels and fmap.shape[-1] == 32 // tap.stride
        assert torch.equal(fmap, ref)
        assert (fmap - changed).abs().max() > 1e-3  # colour reaches the features (an L-only encoder would not move)


def test_same_seed_same_weights(images, tmp_path: Path) -> None:
    small = torch.utils.data.Subset(images, range(16))
    states = [_train(small, tmp_path / str(i), seed=s, steps=2, batch_size=8)[0].state_dict()
              for i, s in enumerate((1, 1, 2))]
    keys = [k for k in states[0] if states[0][k].is_floating_point()]
    assert all(torch.equal(states[0][k], states[1][k]) for k in keys)
    assert any(not torch.equal(states[0][k], states[2][k]) for k in keys)


def test_non_square_images_are_refused() -> None:
    with pytest.raises(UsageError, match="--image-size"):
        Rotation(RotationConfig(), SPEC, DataInfo("cifar10", (32, 48), 10))
    with pytest.raises(UsageError, match="--image-size"):
        rotate_batch(torch.zeros(2, 3, 32, 48, dtype=torch.uint8))


def _sslbench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sslbench", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)


@pytest.mark.slow
def test_cli_lists_and_runs_both_reference_pretexts(tmp_path: Path) -> None:
    listed = _sslbench("list", "pretexts", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "rotation" in listed.stdout and "jigsaw" in listed.stdout

    done = _sslbench("run", "--pretext", "rotation,jigsaw", "--protocol", "linear", "--dataset", "synthetic",
                     "--steps", "3", "--batch-size", "16", "--subset", "64", "--eval-subset", "64",
                     "--eval-epochs", "1", "--device", "cpu", "--set", "encoder.width_mult=0.25",
                     "--set", "jigsaw.permutations=100", "--out", str(tmp_path / "runs"),
                     "--cache-dir", str(tmp_path / "cache"), "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    records = {r["pretext"]: r for r in (json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("*__seed*.json"))}
    assert set(records) == {"rotation", "jigsaw"}
    for name, record in records.items():
        assert record["status"] == "ok", (name, record.get("reason"))
        assert record["train"]["steps"] == 3
        assert set(record["metrics"]["layer"]) == {"stage1", "stage2", "stage3", "stage4"}
        assert 0.0 <= record["metrics"]["best"]["top1"] <= 100.0
    assert records["jigsaw"]["config"]["pretext_run"]["pretext_options"]["permutations"] == 100
