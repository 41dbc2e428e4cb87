"""``splitbrain`` (Zhang et al. 2017) on real CIFAR-10 images: training through the real trainer, checkpoint
round-trip, colorization, the concatenated two-half representation, and determinism."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sslbench.checkpoints import CheckpointStore
from sslbench.colour import lab_to_rgb, rgb_to_lab
from sslbench.config import TrainBudget
from sslbench.datasets import create_dataset
from sslbench.errors import UsageError
from sslbench.pretext import DataInfo, EncoderSpec, images_to_rgb
from sslbench.pretexts.splitbrain import SplitBrain, SplitBrainConfig
from sslbench.progress import Progress
from sslbench.runtime import Runtime, seed_everything
from sslbench.trainer import load_trained, train_pretext

SPEC = EncoderSpec("vgg_small", {}, 32)
INFO = DataInfo("cifar10", 32, 10)


@pytest.fixture(scope="module")
def images(shared_data: Path):
    return create_dataset("cifar10", root=shared_data / "cifar10", split="test", subset=128)


def _train(dataset, tmp: Path, seed: int, steps: int, batch_size: int = 32):
    seed_everything(seed)
    pretext = SplitBrain(SplitBrainConfig(), SPEC, INFO)
    store = CheckpointStore(tmp, "splitbrain", f"s{seed}-{steps}")
    summary = train_pretext(pretext, dataset, Runtime("cpu"), TrainBudget(steps=steps, batch_size=batch_size),
                            store, seed, Progress.disabled(), log_every=1)
    return pretext, store, summary


def _rgb(dataset, n: int = 8) -> torch.Tensor:
    return images_to_rgb(torch.stack([dataset[i]["image"] for i in range(n)]))


def test_trains_reloads_and_colorizes(images, tmp_path: Path) -> None:
    pretext, store, summary = _train(images, tmp_path, seed=0, steps=30)
    for key in ("loss", "loss_ab", "loss_l"):
        values = [h[key] for h in summary.history]
        assert sum(values[-5:]) / 5 < 0.95 * sum(values[:5]) / 5, (key, values)

    seed_everything(99)
    fresh = SplitBrain(SplitBrainConfig(), SPEC, INFO)
    load_trained(fresh, store, Runtime("cpu"))
    pretext.eval()
    fresh.eval()
    rgb = _rgb(images)
    with torch.no_grad():
        for a, b in zip(pretext.representation()(rgb), fresh.representation()(rgb)):
            assert torch.equal(a, b)
    out = fresh.colorize(rgb)
    assert out.shape == rgb.shape and out.min() >= 0.0 and out.max() <= 1.0
    assert (rgb_to_lab(out)[:, 0] - rgb_to_lab(rgb)[:, 0]).abs().max() <= 1.0


def test_representation_concatenates_both_halves(images) -> None:
    torch.manual_seed(0)
    pretext = SplitBrain(SplitBrainConfig(bins="gamut"), SPEC, INFO).eval()
    assert pretext.half_width
    rep = pretext.representation()
    full = SPEC.build(in_chans=1)
    for tap, left, right, whole in zip(rep.taps, pretext.encoder.taps, pretext.ab_encoder.taps, full.taps):
        assert tap.channels == left.channels + right.channels == whole.channels
        assert tap.name == left.name == right.name and tap.stride == left.stride == right.stride
    assert pretext.ab_encoder.in_chans == 2

    rgb = _rgb(images, 4)
    lab = rgb_to_lab(rgb)
    recoloured = lab_to_rgb(torch.cat([lab[:, :1], -0.5 * lab[:, 1:]], dim=1))  # same L, other colours
    assert (rgb_to_lab(recoloured)[:, 0] - lab[:, 0]).abs().max() < 0.5
    with torch.no_grad():
        before, after = rep(rgb), rep(recoloured)
    for tap, a, b in zip(rep.taps, before, after):
        half = pretext.encoder.taps[[t.name for t in rep.taps].index(tap.name)].channels
        assert a.shape[1] == tap.channels
        assert (a[:, half:] - b[:, half:]).abs().max() > 1e-3  # the ab half sees the colour change
        assert (a[:, :half] - b[:, :half]).abs().max() < 0.05 * a[:, :half].abs().max()  # the L half hardly


def test_same_seed_same_weights(images, tmp_path: Path) -> None:
    small = torch.utils.data.Subset(images, range(32))
    states = [_train(small, tmp_path / str(i), seed=s, steps=2, batch_size=16)[0].state_dict()
              for i, s in enumerate((1, 1, 2))]
    keys = [k for k in states[0] if torch.is_tensor(states[0][k]) and states[0][k].is_floating_point()]
    assert all(torch.equal(states[0][k], states[1][k]) for k in keys)
    assert any(not torch.equal(states[0][k], states[2][k]) for k in keys)


def test_halves_follow_a_narrowed_encoder() -> None:
    """With encoder.width_mult=0.5 each half is a quarter-width network, so the representation is as wide as the
    narrowed encoder every other pretext uses (it used to be twice as wide)."""
    narrow = EncoderSpec(SPEC.name, {**SPEC.options, "width_mult": 0.5}, SPEC.image_size)
    pretext = SplitBrain(SplitBrainConfig(bins="gamut"), narrow, INFO)
    for tap, whole in zip(pretext.representation().taps, narrow.build(in_chans=1).taps):
        assert tap.channels == whole.channels


def test_fixed_width_encoders_need_halves_full() -> None:
    timm_spec = EncoderSpec("timm/resnet18", {}, 32)
    with pytest.raises(UsageError, match="splitbrain.halves=full"):
        SplitBrain(SplitBrainConfig(bins="gamut"), timm_spec, INFO)
    pretext = SplitBrain(SplitBrainConfig(bins="gamut", halves="full"), timm_spec, INFO)
    assert not pretext.half_width
    assert pretext.representation().taps[-1].channels == 2 * timm_spec.build(in_chans=1).taps[-1].channels
