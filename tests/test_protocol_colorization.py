"""The ``colorization`` protocol on real CIFAR-10 images, checked against skimage + NumPy computations.

The protocol trains nothing: the ``regression`` pretext is used as built (untrained), which is enough to exercise the
metric pipeline; the reference rows are checked against independent implementations.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.color import rgb2lab

from sslbench.config import resolve_options
from sslbench.datasets import create_dataset
from sslbench.pretext import DataInfo, EncoderSpec
from sslbench.progress import Progress
from sslbench.protocol import EvalData
from sslbench.registry import PRETEXTS, PROTOCOLS
from sslbench.runtime import Runtime, seed_everything

TRAIN_IMAGES = 300
EVAL_IMAGES = 100


@pytest.fixture(scope="module")
def setup(shared_data, tmp_path_factory, one_thread):
    root = shared_data / "cifar10"
    train = create_dataset("cifar10", root=root, split="train", subset=TRAIN_IMAGES)
    test = create_dataset("cifar10", root=root, split="test", subset=EVAL_IMAGES)
    seed_everything(0)
    cls = PRETEXTS.get("regression")
    pretext = cls(cls.Config(), EncoderSpec("vgg_small", {"width_mult": 0.25}, 32), DataInfo("cifar10", 32, 10))
    pretext.eval()
    cache = tmp_path_factory.mktemp("cache")
    data = EvalData(train=train, test=test, batch_size=50, seed=0, cache_dir=str(cache / "features" / "abc"))
    protocol_cls = PROTOCOLS.get("colorization")
    # rebalance_sigma=0: weights are the inverse of the raw training prior, which the test recomputes independently.
    protocol = protocol_cls(resolve_options(protocol_cls.Config, {"rebalance_sigma": "0"}, "colorization"))
    metrics = protocol.evaluate(pretext, data, Runtime("cpu"), Progress.disabled())
    return {"metrics": metrics, "train": train, "test": test, "cache": cache, "protocol": protocol, "data": data,
            "pretext": pretext}


def _evaluate(setup, **options: str):
    """The setup's pretext and data under other protocol options; returns (metrics, protocol)."""
    protocol_cls = PROTOCOLS.get("colorization")
    protocol = protocol_cls(resolve_options(protocol_cls.Config, {"rebalance_sigma": "0", **options}, "colorization"))
    return protocol.evaluate(setup["pretext"], setup["data"], Runtime("cpu"), Progress.disabled()), protocol


@pytest.fixture(scope="module")
def trapezoid(setup):
    return _evaluate(setup, auc="trapezoid")


def _lab(dataset) -> np.ndarray:
    images = np.stack([dataset[i]["image"].permute(1, 2, 0).numpy() for i in range(len(dataset))])
    return rgb2lab(images.astype(np.float64) / 255.0)


def _auc(err: np.ndarray, weights: np.ndarray | None = None) -> float:
    weights = np.ones_like(err) if weights is None else weights
    curve = [(weights * (err <= t)).sum() / weights.sum() for t in range(151)]
    return 100.0 * float(np.mean(curve))


def test_metric_keys_and_ranges(setup):
    m = setup["metrics"]
    for prefix in ("", "reference/gray/"):
        for key in ("auc", "auc_rebal", "psnr", "ssim", "colourfulness"):
            assert math.isfinite(m[prefix + key]), prefix + key
        assert 0.0 < m[prefix + "auc"] <= 100.0 and 0.0 < m[prefix + "auc_rebal"] <= 100.0
        assert 10.0 < m[prefix + "psnr"] < 60.0 and 0.5 < m[prefix + "ssim"] < 1.0
    # Ground truth: AuC 100, PSNR inf and SSIM 1 by definition; only its colourfulness is reported.
    assert [k for k in m if k.startswith("reference/ground_truth/")] == ["reference/ground_truth/colourfulness"]
    assert m["reference/gray/colourfulness"] < 0.1 < m["reference/ground_truth/colourfulness"]
    # Rebalancing weights rare (saturated) colours up, which gray cannot reproduce (Zhang: 89.1 -> 58.0).
    assert m["reference/gray/auc_rebal"] < m["reference/gray/auc"] - 5.0
    assert abs(m["auc_rebal"] - m["auc"]) > 1.0


def test_gray_auc_and_colourfulness_match_skimage_numpy(setup):
    m, lab = setup["metrics"], _lab(setup["test"])
    err = np.hypot(lab[..., 1], lab[..., 2])
    assert m["reference/gray/auc"] == pytest.approx(_auc(err), abs=1e-3)

    images = np.stack([setup["test"][i]["image"].numpy() for i in range(EVAL_IMAGES)]).astype(np.float64)
    rg = images[:, 0] - images[:, 1]
    yb = 0.5 * (images[:, 0] + images[:, 1]) - images[:, 2]
    hasler = (np.sqrt(rg.reshape(EVAL_IMAGES, -1).var(1) + yb.reshape(EVAL_IMAGES, -1).var(1))
              + 0.3 * np.sqrt(rg.reshape(EVAL_IMAGES, -1).mean(1) ** 2 + yb.reshape(EVAL_IMAGES, -1).mean(1) ** 2))
    assert m["reference/ground_truth/colourfulness"] == pytest.approx(hasler.mean(), rel=1e-4)


def test_gray_rebalanced_auc_matches_independent_inverse_prior(setup):
    """Inverse training-prior weights on the grid of 10, a pixel in an unseen cell taking the nearest occupied one."""
    train_ab = _lab(setup["train"])[..., 1:].reshape(-1, 2)
    cells, counts = np.unique(np.floor(train_ab / 10.0 + 0.5).astype(int), axis=0, return_counts=True)
    prior = counts / counts.sum()
    test_ab = _lab(setup["test"])[..., 1:].reshape(-1, 2)
    test_cells, inverse = np.unique(np.floor(test_ab / 10.0 + 0.5), axis=0, return_inverse=True)
    nearest = np.argmin(((test_cells[:, None, :] - cells[None, :, :]) ** 2).sum(-1), axis=1)
    weights = 1.0 / prior[nearest[inverse.reshape(-1)]]
    err = np.hypot(test_ab[:, 0], test_ab[:, 1])
    assert setup["metrics"]["reference/gray/auc_rebal"] == pytest.approx(_auc(err, weights), abs=1e-3)
    assert (setup["cache"] / "priors").is_dir() and any((setup["cache"] / "priors").iterdir())


def test_pretext_auc_is_computed_on_its_output(setup, one_thread):
    """The pretext's AuC equals the one recomputed here from its colorize() output (skimage Lab)."""
    test = setup["test"]
    seed_everything(0)
    cls = PRETEXTS.get("regression")
    pretext = cls(cls.Config(), EncoderSpec("vgg_small", {"width_mult": 0.25}, 32), DataInfo("cifar10", 32, 10))
    pretext.eval()
    rgb = torch.stack([test[i]["image"] for i in range(EVAL_IMAGES)]).float() / 255.0
    out = pretext.colorize(rgb).clamp(0, 1).permute(0, 2, 3, 1).double().numpy()
    pred = rgb2lab(out)
    true = _lab(test)
    err = np.hypot(pred[..., 1] - true[..., 1], pred[..., 2] - true[..., 2])
    assert setup["metrics"]["auc"] == pytest.approx(_auc(err), abs=0.05)


def _gray_curve(test) -> np.ndarray:
    """The gray row's cumulative ab-error fractions at t = 0..150, from skimage Lab."""
    err = np.hypot(*_lab(test)[..., 1:].transpose(3, 0, 1, 2)).reshape(-1)
    return np.array([(err <= t).mean() for t in range(151)])


def test_conventions_are_recorded_among_the_metrics(setup, trapezoid):
    assert setup["metrics"]["convention/auc"] == "mean151" and setup["metrics"]["convention/prior"] == "train"
    assert trapezoid[0]["convention/auc"] == "trapezoid"


def test_trapezoid_auc_matches_numpy_on_real_images(setup, trapezoid):
    curve = _gray_curve(setup["test"])
    expected = 100.0 * np.trapezoid(curve, np.arange(151)) / 150.0
    assert trapezoid[0]["reference/gray/auc"] == pytest.approx(expected, abs=1e-3)
    assert trapezoid[0]["reference/gray/auc"] != pytest.approx(setup["metrics"]["reference/gray/auc"], abs=1e-3)


def test_mean151_minus_trapezoid_is_the_end_point_adjustment(setup, trapezoid):
    """mean = S/151 and trapezoid = (S - (f(0) + f(150))/2)/150 for the same curve f with sum S: an identity."""
    from sslbench.colour import rgb_to_lab
    from sslbench.metrics import ab_error_curve
    from sslbench.protocols._judge import gray_rgb

    rgb = torch.stack([setup["test"][i]["image"] for i in range(EVAL_IMAGES)]).float() / 255.0
    curve = ab_error_curve(rgb_to_lab(gray_rgb(rgb).clamp(0, 1))[:, 1:], rgb_to_lab(rgb)[:, 1:]).numpy()
    total, ends = 100.0 * curve.sum(), 100.0 * (curve[0] + curve[-1])
    difference = setup["metrics"]["reference/gray/auc"] - trapezoid[0]["reference/gray/auc"]
    assert difference == pytest.approx(total / 151 - total / 150 + ends / 300, abs=1e-9)
    assert 0 < abs(difference) <= 100.0 / 300  # the two rules differ, by at most 1/300 of the range


def _recompute(per_image) -> float:
    if per_image.kind == "mean":
        return float(np.mean(per_image.arrays["values"]))
    assert per_image.kind == "ratio"
    return float(np.sum(per_image.arrays["num"]) / np.sum(per_image.arrays["den"]))


@pytest.mark.parametrize("which", ["setup", "trapezoid"])
def test_per_image_values_recompute_every_metric(setup, trapezoid, which):
    metrics, protocol = (setup["metrics"], setup["protocol"]) if which == "setup" else trapezoid
    per_image = protocol.per_image
    assert per_image["auc"].kind == "mean"  # CIFAR images all have 32x32 pixels
    assert per_image["auc_rebal"].kind == "ratio" and per_image["psnr"].kind == "mean"
    numeric = {k for k, v in metrics.items() if isinstance(v, float)}
    assert set(per_image) == numeric
    for name, values in per_image.items():
        assert all(len(a) == EVAL_IMAGES for a in values.arrays.values()), name
        assert _recompute(values) == pytest.approx(metrics[name], abs=1e-6), name


def test_per_image_auc_is_a_ratio_when_image_sizes_differ(shared_data, one_thread):
    """Two batches of real CamVid crops of different sizes: raw AuC is pooled over pixels, so per image a ratio."""
    from sslbench.protocols.colorization import _Row
    from sslbench.colour import rgb_to_lab
    from sslbench.protocols._judge import gray_rgb

    camvid = create_dataset("camvid", root=shared_data / "camvid", split="val", subset=4, image_size=(36, 48))
    rgb = torch.stack([camvid[i]["image"] for i in range(4)]).float() / 255.0
    row = _Row(150, True, "trapezoid")
    for batch in (rgb[:2], rgb[2:, :, :24, :32]):
        true_ab = rgb_to_lab(batch)[:, 1:]
        weights = 1.0 + true_ab.norm(dim=1)
        row.update(gray_rgb(batch).clamp(0, 1), batch, true_ab, weights, 100.0)
    metrics, per_image = row.metrics(), row.per_image()
    assert per_image["auc"].kind == "ratio"
    np.testing.assert_array_equal(per_image["auc"].arrays["den"], [36 * 48] * 2 + [24 * 32] * 2)
    for name in ("auc", "auc_rebal", "psnr", "ssim", "colourfulness"):
        assert _recompute(per_image[name]) == pytest.approx(metrics[name], abs=1e-6), name


def test_file_prior_gives_the_same_numbers_as_the_same_prior_from_the_training_split(setup, tmp_path, one_thread):
    """Zhang's file format (pts_in_hull.npy + prior_probs.npy) holding the training split's own prior."""
    from sslbench.protocols.colorization import training_prior

    bins = training_prior(setup["data"], Runtime("cpu"), 10, Progress.disabled())
    np.save(tmp_path / "pts_in_hull.npy", bins.centers.numpy().astype(np.float64))
    np.save(tmp_path / "prior_probs.npy", bins.prior.numpy().astype(np.float64))
    option = f"file:{tmp_path / 'prior_probs.npy'}"
    metrics, _ = _evaluate(setup, prior=option)
    assert metrics["convention/prior"] == option
    for key in ("auc_rebal", "reference/gray/auc_rebal", "auc"):
        assert metrics[key] == pytest.approx(setup["metrics"][key], abs=1e-6), key
    # A uniform prior in the file: every pixel weighs the same, so the rebalanced AuC is the raw one.
    np.save(tmp_path / "prior_probs.npy", np.ones(len(bins.prior)))
    metrics, _ = _evaluate(setup, prior=option)
    for row in ("", "reference/gray/"):
        assert metrics[row + "auc_rebal"] == pytest.approx(metrics[row + "auc"], abs=1e-9)
        assert abs(metrics[row + "auc_rebal"] - setup["metrics"][row + "auc_rebal"]) > 1.0


def test_bad_convention_options_are_usage_errors(tmp_path):
    from sslbench.errors import UsageError

    cls = PROTOCOLS.get("colorization").Config
    with pytest.raises(UsageError, match="auc='simpson'.*mean151, trapezoid"):
        resolve_options(cls, {"auc": "simpson"}, "colorization")
    with pytest.raises(UsageError, match="train or file:PATH"):
        resolve_options(cls, {"prior": "imagenet"}, "colorization")
    (tmp_path / "prior_probs.npy").write_bytes(b"")
    with pytest.raises(UsageError, match=str(tmp_path / "pts_in_hull.npy")):
        resolve_options(cls, {"prior": f"file:{tmp_path / 'prior_probs.npy'}"}, "colorization")
