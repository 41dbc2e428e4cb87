"""The ``hypercolumn`` pretext (Larsson et al.) on real CIFAR-10 images with the real encoder, trainer and checkpoints.

Independent checks: the sparse gather against a brute-force bilinear loop and against ``F.interpolate`` upsampling;
the chroma weight against the release's formula at hand-picked lightness values; colorize against the input's L.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from sslbench.checkpoints import CheckpointStore
from sslbench.colour import rgb_to_lab
from sslbench.config import TrainBudget
from sslbench.datasets import create_dataset
from sslbench.pretext import DataInfo, EncoderSpec
from sslbench.pretexts.hypercolumn import (
    Hypercolumn,
    HypercolumnConfig,
    chroma_loss_weight,
    gather_hypercolumn,
    sample_points,
)
from sslbench.progress import Progress
from sslbench.registry import PRETEXTS
from sslbench.runtime import Runtime, seed_everything
from sslbench.trainer import load_trained, train_pretext

# Half-width vgg_small: the real default encoder at a quarter of its CPU cost.
SPEC = EncoderSpec("vgg_small", {"width_mult": 0.5}, 32)
INFO = DataInfo("cifar10", 32, 10)


@pytest.fixture(scope="module")
def cifar(shared_data: Path):
    return create_dataset("cifar10", root=shared_data / "cifar10", split="train", subset=256)


@pytest.fixture(scope="module")
def images(cifar) -> torch.Tensor:
    """16 real CIFAR-10 images as float RGB in [0, 1]."""
    return torch.stack([cifar[i]["image"] for i in range(16)]).float() / 255.0


def _build(seed: int = 0, **options) -> Hypercolumn:
    seed_everything(seed)
    return Hypercolumn(HypercolumnConfig(**options), SPEC, INFO)


def _train(tmp_path: Path, dataset, seed: int, steps: int, **options) -> tuple[Hypercolumn, CheckpointStore, object]:
    pretext = _build(seed, **options)
    store = CheckpointStore(tmp_path, "hypercolumn", f"seed{seed}")
    summary = train_pretext(pretext, dataset, Runtime("cpu"), TrainBudget(steps=steps, batch_size=16), store, seed,
                            Progress.disabled(), log_every=5, checkpoint_every=10_000)
    return pretext, store, summary


def test_registered() -> None:
    assert PRETEXTS.get("hypercolumn") is Hypercolumn


def test_points_respect_border_are_distinct_and_cover_interior() -> None:
    torch.manual_seed(0)
    seen = torch.zeros(32, 32, dtype=torch.bool)
    for _ in range(20):
        points = sample_points(8, 32, 32, num_points=128, border=3)
        assert points.shape == (8, 128, 2) and points.dtype == torch.long
        assert points.min() >= 3 and points.max() <= 32 - 1 - 3
        flat = points[..., 0] * 32 + points[..., 1]
        assert all(row.unique().numel() == 128 for row in flat)
        seen[points[..., 0].reshape(-1), points[..., 1].reshape(-1)] = True
    # Every interior pixel drawn at least once in 20 x 8 x 128 draws; no border pixel ever.
    assert seen[3:29, 3:29].all() and seen.sum() == 26 * 26
    with pytest.raises(ValueError, match="num_points"):
        sample_points(1, 32, 32, num_points=26 * 26 + 1, border=3)


def test_points_follow_the_global_seed() -> None:
    torch.manual_seed(5)
    first = sample_points(4, 32, 32, 64, 2)
    second = sample_points(4, 32, 32, 64, 2)
    torch.manual_seed(5)
    assert torch.equal(first, sample_points(4, 32, 32, 64, 2))
    assert not torch.equal(first, second)


def _bilinear_brute_force(fmap: torch.Tensor, stride: int, y: int, x: int) -> torch.Tensor:
    """One pixel's bilinear reading of a (C, h, w) map, cell i centred on input pixel s*i + (s-1)/2, edges clamped."""
    _, h, w = fmap.shape
    v = min(max((y + 0.5) / stride - 0.5, 0.0), h - 1.0)
    u = min(max((x + 0.5) / stride - 0.5, 0.0), w - 1.0)
    y0, x0 = math.floor(v), math.floor(u)
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    fy, fx = v - y0, u - x0
    return ((1 - fy) * (1 - fx) * fmap[:, y0, x0] + (1 - fy) * fx * fmap[:, y0, x1]
            + fy * (1 - fx) * fmap[:, y1, x0] + fy * fx * fmap[:, y1, x1])


@pytest.mark.parametrize("size", [32, 28])
def test_sparse_gather_matches_brute_force_bilinear(cifar, size: int) -> None:
    seed_everything(0)
    spec = EncoderSpec("vgg_small", {"width_mult": 0.25}, size)
    encoder = spec.build(in_chans=1).eval()
    rgb = torch.stack([cifar[i]["image"] for i in range(3)]).float()[..., :size, :size] / 255.0
    with torch.no_grad():
        maps = encoder(rgb_to_lab(rgb)[:, :1] / 50.0 - 1.0)
    torch.manual_seed(1)
    points = sample_points(3, size, size, 40, 0)
    columns = gather_hypercolumn(maps, encoder.taps, points)
    assert columns.shape == (3, 40, sum(t.channels for t in encoder.taps))
    for n in range(3):
        for p in range(40):
            y, x = points[n, p].tolist()
            expected = torch.cat([_bilinear_brute_force(m[n], t.stride, y, x) for m, t in zip(maps, encoder.taps)])
            torch.testing.assert_close(columns[n, p], expected, rtol=1e-5, atol=1e-5)


def test_sparse_hypercolumn_equals_dense_upsampled_hypercolumn(images: torch.Tensor) -> None:
    pretext = _build(0).eval()
    lightness = rgb_to_lab(images[:4])[:, :1]
    with torch.no_grad():
        maps = pretext.column_maps(lightness)
        # Independent dense hypercolumn: every map upsampled to full resolution by F.interpolate.
        dense = torch.cat([F.interpolate(m, size=(32, 32), mode="bilinear", align_corners=False) for m in maps], 1)
        torch.manual_seed(3)
        points = pretext.sample_points(4, 32, 32, torch.device("cpu"))
        sparse = pretext.hypercolumns(maps, points)
        n_index = torch.arange(4)[:, None]
        torch.testing.assert_close(sparse, dense[n_index, :, points[..., 0], points[..., 1]], rtol=1e-5, atol=1e-5)
        # The dense logits of colorize are the head applied to that dense hypercolumn.
        hue, chroma = pretext.dense_logits(lightness)
        ref_hue, ref_chroma = pretext.predict(dense.permute(0, 2, 3, 1))
        torch.testing.assert_close(hue, ref_hue.permute(0, 3, 1, 2), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(chroma, ref_chroma.permute(0, 3, 1, 2), rtol=1e-4, atol=1e-5)


def test_chroma_weight_is_the_release_formula() -> None:
    lightness = torch.tensor([0.0, 10.0, 20.0, 1 / 3 * 100, 50.0, 80.0, 90.0, 100.0])
    expected = torch.tensor([0.0, 0.3, 0.6, 1.0, 1.0, 0.6, 0.3, 0.0])
    torch.testing.assert_close(chroma_loss_weight(lightness), expected, rtol=0, atol=1e-5)


def test_training_reduces_loss_and_checkpoint_reloads(tmp_path: Path, cifar, images: torch.Tensor) -> None:
    pretext, store, summary = _train(tmp_path, cifar, seed=0, steps=30)
    assert summary.steps == 30 and store.has_final()
    first, last = summary.history[0], summary.history[-1]
    assert {"loss", "loss_hue", "loss_chroma"} <= set(last)
    # Uniform predictions at the start (zero-initialised predictor); the fitted histograms are clearly better.
    assert last["loss"] < 0.85 * first["loss"], summary.history

    fresh = _build(123)
    summary_back = load_trained(fresh, store, Runtime("cpu"))
    assert summary_back.steps == 30
    pretext.eval()
    fresh.eval()
    with torch.no_grad():
        for a, b in zip(pretext.representation()(images), fresh.representation()(images)):
            assert torch.equal(a, b)
    assert torch.equal(pretext.colorize(images), fresh.colorize(images))


def test_colorize_is_valid_rgb_keeping_l_and_is_chunk_invariant(tmp_path: Path, cifar, images: torch.Tensor) -> None:
    pretext, _, _ = _train(tmp_path, cifar, seed=1, steps=15)
    pretext.eval()
    out = pretext.colorize(images)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0 and torch.isfinite(out).all()
    l_in, l_out = rgb_to_lab(images)[:, 0], rgb_to_lab(out)[:, 0]
    assert (l_in - l_out).abs().max() < 1.0
    # Not grey: the trained heads give colour (an all-uniform head would fade every pixel to grey).
    assert rgb_to_lab(out)[:, 1:].norm(dim=1).mean() > 1.0
    pretext.config.chunk_pixels = 100  # 1024 pixels in 11 uneven chunks
    torch.testing.assert_close(pretext.colorize(images), out, rtol=0, atol=1e-5)


def test_same_seed_same_weights_and_window_targets(tmp_path: Path, cifar) -> None:
    a, _, _ = _train(tmp_path / "a", cifar, seed=7, steps=2, target_window=7)
    b, _, _ = _train(tmp_path / "b", cifar, seed=7, steps=2, target_window=7)
    c, _, _ = _train(tmp_path / "c", cifar, seed=8, steps=2, target_window=7)
    state_a, state_b, state_c = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not all(torch.equal(state_a[k], state_c[k]) for k in state_a)


def test_rejects_too_many_points() -> None:
    with pytest.raises(ValueError, match="num_points"):
        Hypercolumn(HypercolumnConfig(num_points=700, border=4), SPEC, INFO)
