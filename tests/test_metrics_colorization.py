"""Tests for sslbench.metrics.colorization against skimage and brute-force numpy references.

All image tests use real photographs (CIFAR-10 test images, CamVid crops) from the shared data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import rgb2gray, rgb2lab
from skimage.filters import gaussian
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from sslbench.metrics import AuCAccumulator, ab_error_curve, auc_ab, colourfulness, psnr, ssim

CIFAR_CLASSES = ["airplane", "bird", "cat", "frog", "ship", "truck"]


def _cifar_images(root: Path, per_class: int = 1) -> np.ndarray:
    """(N, 32, 32, 3) float64 in [0, 1]."""
    images = []
    for cls in CIFAR_CLASSES:
        for i in range(per_class):
            path = root / "cifar10" / "test" / cls / f"{i:04d}.jpg"
            images.append(np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0)
    return np.stack(images)


def _camvid_crops(root: Path, size: int = 128, count: int = 2) -> np.ndarray:
    """(count, size, size, 3) float64 in [0, 1]: crops of CamVid val images."""
    paths = sorted((root / "camvid" / "val").glob("*.png"))[:: 40][:count]
    crops = []
    for j, path in enumerate(paths):
        img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0
        top, left = 100 + 30 * j, 150 + 50 * j
        crops.append(img[top : top + size, left : left + size])
    return np.stack(crops)


def _to_nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _degrade_rgb(images: np.ndarray, seed: int) -> np.ndarray:
    """Noise on the first third, blur on the second, colour shift on the rest; clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    out = images.copy()
    for i in range(len(out)):
        kind = i % 3
        if kind == 0:
            out[i] = out[i] + rng.normal(0.0, 0.08, out[i].shape)
        elif kind == 1:
            out[i] = gaussian(out[i], sigma=1.2, channel_axis=-1)
        else:
            out[i] = out[i] * np.array([1.1, 0.9, 0.8]) + np.array([0.02, 0.0, 0.05])
    return np.clip(out, 0.0, 1.0)


def _ab_pair(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Real ab channels and a plausible prediction (blurred, shifted, desaturated, noisy)."""
    rng = np.random.default_rng(0)
    true_ab = np.stack([rgb2lab(img)[..., 1:] for img in images])
    pred_ab = np.stack([gaussian(ab, sigma=2.0, channel_axis=-1) for ab in true_ab])
    pred_ab = 0.6 * np.roll(pred_ab, shift=(2, -3), axis=(1, 2))
    pred_ab = pred_ab + rng.normal(0.0, 4.0, pred_ab.shape)
    return true_ab, pred_ab


def _brute_force_curve(
    pred_ab: np.ndarray, true_ab: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """Direct loop over thresholds: weighted fraction of pixels with ||ab error|| <= t."""
    err = np.sqrt(((pred_ab - true_ab) ** 2).sum(axis=-1)).ravel()
    w = np.ones_like(err) if weights is None else weights.ravel()
    curve = []
    for t in range(151):
        hit = 0.0
        for e, wi in zip(err, w):
            if e <= t:
                hit += wi
        curve.append(hit / w.sum())
    return np.array(curve)


@pytest.fixture(scope="module")
def camvid_ab(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    # 2 crops of 48x48 keep the pure-Python reference loop fast (~4.6k pixels x 151 thresholds).
    return _ab_pair(_camvid_crops(shared_data, size=48))


def test_ab_error_curve_matches_brute_force_loop(camvid_ab: tuple[np.ndarray, np.ndarray]) -> None:
    true_ab, pred_ab = camvid_ab
    ref = _brute_force_curve(pred_ab, true_ab)
    curve = ab_error_curve(_to_nchw(pred_ab), _to_nchw(true_ab))
    assert curve.shape == (151,) and curve.dtype == torch.float64
    np.testing.assert_allclose(curve.numpy(), ref, rtol=0, atol=1e-12)
    # The curve is non-trivial on this data, so the comparison can fail.
    assert 0.05 < ref[10] < 0.95
    assert auc_ab(_to_nchw(pred_ab), _to_nchw(true_ab)) == pytest.approx(ref.mean(), abs=1e-12)


def test_rebalanced_auc_matches_weighted_brute_force(
    camvid_ab: tuple[np.ndarray, np.ndarray],
) -> None:
    true_ab, pred_ab = camvid_ab
    # Inverse prior of each pixel's ground-truth ab bin (10x10 Lab-unit grid, as in Zhang et al.).
    bins = np.floor((true_ab + 110.0) / 10.0).astype(np.int64)
    flat_bin = bins[..., 0] * 23 + bins[..., 1]
    prior = np.bincount(flat_bin.ravel()) / flat_bin.size
    weights = 1.0 / prior[flat_bin]
    ref = _brute_force_curve(pred_ab, true_ab, weights)
    w = torch.from_numpy(weights)
    curve = ab_error_curve(_to_nchw(pred_ab), _to_nchw(true_ab), pixel_weights=w)
    np.testing.assert_allclose(curve.numpy(), ref, rtol=1e-12, atol=1e-12)
    rebalanced = auc_ab(_to_nchw(pred_ab), _to_nchw(true_ab), pixel_weights=w)
    assert rebalanced == pytest.approx(ref.mean(), abs=1e-12)
    # (N, 1, H, W) weights are accepted too, and rebalancing changes the number.
    assert auc_ab(_to_nchw(pred_ab), _to_nchw(true_ab), pixel_weights=w[:, None]) == rebalanced
    assert abs(rebalanced - auc_ab(_to_nchw(pred_ab), _to_nchw(true_ab))) > 1e-3


def test_accumulator_over_batches_equals_single_pass(shared_data: Path) -> None:
    true_ab, pred_ab = _ab_pair(_cifar_images(shared_data, per_class=2))
    pred, true = _to_nchw(pred_ab), _to_nchw(true_ab)
    weights = torch.rand(true.shape[0], true.shape[2], true.shape[3], dtype=torch.float64)
    acc, acc_w = AuCAccumulator(), AuCAccumulator()
    for i in range(0, pred.shape[0], 5):
        acc.update(pred[i : i + 5], true[i : i + 5])
        acc_w.update(pred[i : i + 5], true[i : i + 5], weights[i : i + 5])
    assert torch.equal(acc.curve(), ab_error_curve(pred, true))
    assert acc.compute() == auc_ab(pred, true)
    assert acc_w.compute() == pytest.approx(auc_ab(pred, true, pixel_weights=weights), abs=1e-14)
    acc.reset()
    with pytest.raises(RuntimeError):
        acc.compute()


def test_auc_convention_is_mean_of_inclusive_thresholds_0_to_150() -> None:
    true = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    assert auc_ab(true, true) == 1.0
    # A 3-4-5 triangle: error exactly 5.0, which counts as a hit from t = 5 on.
    pred = true.clone()
    pred[:, 0], pred[:, 1] = 3.0, 4.0
    curve = ab_error_curve(pred, true)
    assert curve[4] == 0.0 and curve[5] == 1.0
    assert auc_ab(pred, true) == pytest.approx(146 / 151, abs=1e-15)
    # Not the trapezoid rule over [0, 150], which would give (146 - 0.5) / 150 here.
    assert abs(auc_ab(pred, true) - 145.5 / 150) > 3e-3
    # A constant error of 75.5 is a hit for t = 76..150 only: 75 of the 151 thresholds.
    pred[:, 0], pred[:, 1] = 75.5, 0.0
    assert auc_ab(pred, true) == pytest.approx(75 / 151, abs=1e-15)
    # Mixed: half the pixels perfect, half with error 200 (> every threshold).
    pred = true.clone()
    pred[..., :2] = 200.0 / np.sqrt(2.0)
    assert auc_ab(pred, true) == pytest.approx(0.5, abs=1e-15)
    assert auc_ab(pred, true, max_threshold=10) == pytest.approx(0.5, abs=1e-15)


def test_auc_float32_close_to_float64(camvid_ab: tuple[np.ndarray, np.ndarray]) -> None:
    true_ab, pred_ab = camvid_ab
    a64 = auc_ab(_to_nchw(pred_ab), _to_nchw(true_ab))
    a32 = auc_ab(_to_nchw(pred_ab).float(), _to_nchw(true_ab).float())
    assert a32 == pytest.approx(a64, abs=1e-4)


def test_auc_rejects_bad_input() -> None:
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError):
        auc_ab(x, x)
    with pytest.raises(ValueError):
        AuCAccumulator(thresholds=[0.0, 2.0, 1.0])
    acc = AuCAccumulator()
    y = torch.zeros(1, 2, 4, 4)
    acc.update(y, y, torch.zeros(1, 4, 4))
    with pytest.raises(ValueError):
        acc.compute()


@pytest.fixture(scope="module")
def real_rgb_pairs(shared_data: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(true, degraded)] for CIFAR 32x32 images and CamVid 128x128 crops, (N, H, W, 3) float64."""
    cifar = _cifar_images(shared_data, per_class=1)
    camvid = _camvid_crops(shared_data, size=128, count=3)
    return [(cifar, _degrade_rgb(cifar, seed=1)), (camvid, _degrade_rgb(camvid, seed=2))]


def test_psnr_matches_skimage(real_rgb_pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for true, pred in real_rgb_pairs:
        ref = [peak_signal_noise_ratio(t, p, data_range=1.0) for t, p in zip(true, pred)]
        out = psnr(_to_nchw(pred), _to_nchw(true))
        assert out.shape == (len(true),)
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10)
        out32 = psnr(_to_nchw(pred).float(), _to_nchw(true).float())
        np.testing.assert_allclose(out32.numpy(), ref, rtol=1e-4)
        # data_range scales consistently: images on 0..255.
        out255 = psnr(_to_nchw(pred) * 255, _to_nchw(true) * 255, data_range=255.0)
        np.testing.assert_allclose(out255.numpy(), ref, rtol=1e-10)
    true = _to_nchw(real_rgb_pairs[0][0])
    assert torch.isinf(psnr(true, true)).all()


def test_ssim_matches_skimage_on_real_images(
    real_rgb_pairs: list[tuple[np.ndarray, np.ndarray]],
) -> None:
    for true, pred in real_rgb_pairs:
        ref = np.array(
            [
                structural_similarity(
                    t.transpose(2, 0, 1),
                    p.transpose(2, 0, 1),
                    gaussian_weights=True,
                    sigma=1.5,
                    use_sample_covariance=False,
                    channel_axis=0,
                    data_range=1.0,
                )
                for t, p in zip(true, pred)
            ]
        )
        # The degradations are strong enough for the reference to be far from 1.
        assert ref.min() < 0.9
        out64 = ssim(_to_nchw(pred), _to_nchw(true))
        assert out64.shape == (len(true),) and out64.dtype == torch.float64
        np.testing.assert_allclose(out64.numpy(), ref, rtol=0, atol=1e-9)
        out32 = ssim(_to_nchw(pred).float(), _to_nchw(true).float())
        # Spec: within 1e-3 of skimage; float32 actually lands within ~3e-7 on these images.
        np.testing.assert_allclose(out32.numpy(), ref, rtol=0, atol=1e-5)
        # SSIM is symmetric in its arguments.
        np.testing.assert_allclose(ssim(_to_nchw(true), _to_nchw(pred)).numpy(), ref, atol=1e-9)


def test_ssim_identity_and_window_check(shared_data: Path) -> None:
    images = _to_nchw(_cifar_images(shared_data))
    np.testing.assert_allclose(ssim(images, images).numpy(), 1.0, atol=1e-12)
    with pytest.raises(ValueError):
        ssim(images[..., :10, :10], images[..., :10, :10])
    with pytest.raises(ValueError):
        ssim(images, images, window_size=10)


def _colourfulness_numpy(img: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003) on an (H, W, 3) image in [0, 1], straight from the paper."""
    r, g, b = (img[..., i] * 255.0 for i in range(3))
    rg = r - g
    yb = 0.5 * (r + g) - b
    sigma = np.sqrt(np.std(rg) ** 2 + np.std(yb) ** 2)
    mu = np.sqrt(np.mean(rg) ** 2 + np.mean(yb) ** 2)
    return float(sigma + 0.3 * mu)


def test_colourfulness_matches_numpy_reference(
    real_rgb_pairs: list[tuple[np.ndarray, np.ndarray]],
) -> None:
    for true, pred in real_rgb_pairs:
        for images in (true, pred):
            ref = [_colourfulness_numpy(img) for img in images]
            out = colourfulness(_to_nchw(images))
            assert out.shape == (len(images),)
            np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10)
            assert min(ref) > 1.0
            # uint8 input on 0..255.
            as_uint8 = _to_nchw(np.round(images * 255).astype(np.uint8))
            ref8 = [_colourfulness_numpy(np.round(img * 255) / 255) for img in images]
            np.testing.assert_allclose(
                colourfulness(as_uint8, data_range=255.0).numpy(), ref8, rtol=1e-5
            )


def test_colourfulness_of_grey_images_is_zero(shared_data: Path) -> None:
    images = _cifar_images(shared_data)
    grey = np.repeat(np.stack([rgb2gray(img) for img in images])[..., None], 3, axis=-1)
    np.testing.assert_allclose(colourfulness(_to_nchw(grey)).numpy(), 0.0, atol=1e-9)
