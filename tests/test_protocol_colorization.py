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
    return {"metrics": metrics, "train": train, "test": test, "cache": cache}


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
