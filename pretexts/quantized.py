"""``quantized``: colorization as classification over quantised ab (Zhang, Isola & Efros, "Colorful Image
Colorization", ECCV 2016).

Follows the paper (and its release) in:

* the output: Q logits per pixel at 1/4 of the input resolution, bilinearly upsampled ×4 at decode time;
* the targets: ground-truth ab point-sampled every 4th pixel (not averaged), soft-encoded onto the **10** nearest bins
  with a Gaussian of σ = 5 (the paper's "5 nearest" is a typo confirmed by the author), kept sparse (indices and
  weights) all the way into the loss — no dense Q-vector per pixel is ever built;
* class rebalancing: λ = 0.5, prior smoothed with σ = 5, each pixel weighted by the weight of its target's argmax bin;
  ``rebalance=False`` gives the paper's "class" variant (uniform weights);
* grayscale images (no pixel with |a| or |b| > 5) are masked out of the loss;
* decoding: annealed mean, softmax(z / T) with T = 0.38 (``temperature``), recombined with the input's own L;
* Adam with β = (0.9, 0.99) and weight decay 1e-3.

Where sslbench departs, and why:

* **Bins.** The paper's 313 bins are the in-gamut cells that ImageNet occupies; they cannot be rebuilt from the sRGB
  gamut (that gives 261). ``bins="data"`` (default) takes the cells the *training data* occupies and its empirical
  prior, counted in ``prepare`` in one streaming pass — the paper's recipe applied to the data at hand; ``bins="gamut"``
  takes the 261 gamut cells (the prior for rebalancing is still counted from the data, mapped onto them);
  ``bins="files"`` reads Zhang's ``pts_in_hull.npy`` (and ``prior_probs.npy``, else the prior is counted from the
  data) to replicate exactly. Bins, prior and class weights are saved in the checkpoint (``get_extra_state``), so a
  data-dependent Q reloads into a fresh instance.
* **Network.** The registered encoder (``vgg_small`` on CPU, ``vgg16_bn``/``alexnet_bn`` to approach the paper's
  VGG-style net) replaces the paper's 8-block network; its deepest tap feeds :class:`~sslbench.heads.DenseHead`
  (conv-BN-ReLU, bilinear resize to 1/4 of the input, conv-BN-ReLU, 1×1 to Q), standing in for the paper's
  block 8 (which upsamples its stride-8 map ×2 to stride 4).
* **Learning rate.** The paper trains ~450k iterations at lr 3e-5; sslbench's budgets are a few thousand steps at most,
  so the default is 1e-3 (set ``lr=3e-5`` to follow the paper). Batch size comes from the harness's budget.
* **Loss normalisation.** The weighted cross-entropy is summed and divided by the number of predicted pixels in the
  batch (masked gray pixels included), so an all-gray batch contributes exactly 0; the paper does not specify this.
* **Gamut at decode.** Where the annealed-mean ab falls outside sRGB at the pixel's L, its chroma is halved (constant
  L and hue) until the colour round-trips, so ``colorize`` keeps the input's L (clipping alone moves L by > 1 near
  black).

Logged terms: ``loss`` and ``gray_fraction`` (the fraction of the batch's images masked as grayscale).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from sslbench.colour import normalize_l, rgb_to_lab
from sslbench.pretext import DataInfo, EncoderSpec, Pretext, images_to_rgb, merge_l_ab
from sslbench.pretexts._abbins import ABClassifier, initial_bins, prepare_bins
from sslbench.registry import register_pretext
from sslbench.runtime import Runtime


@dataclass
class QuantizedConfig:
    #: Where the ab bins come from: ``data`` (cells the training data occupies), ``gamut`` (the 261 in-gamut cells)
    #: or ``files`` (Zhang's pts_in_hull.npy).
    bins: str = "data"
    #: Side of an ab bin, in ab units (Zhang: 10).
    grid_size: int = 10
    #: Zhang's pts_in_hull.npy for ``bins=files``; None: not used.
    pts_in_hull: str | None = None
    #: Zhang's prior_probs.npy for ``bins=files``; None: the prior is counted from the data.
    prior_probs: str | None = None
    #: Weight each pixel by the rebalanced inverse prior of its target bin; false: Zhang's "class" variant (uniform
    #: weights).
    rebalance: bool = True
    #: Weight of the uniform distribution mixed into the prior before inverting it (Zhang: 0.5).
    rebalance_lambda: float = 0.5
    #: Gaussian smoothing (ab units) of the prior before rebalancing (Zhang: 5).
    rebalance_sigma: float = 5.0
    #: Bins each target is soft-encoded onto (Zhang: 10).
    neighbours: int = 10
    #: Width (ab units) of the soft-encoding Gaussian (Zhang: 5).
    sigma: float = 5.0
    #: Images with no pixel whose |a| or |b| exceeds this are grayscale and left out of the loss.
    gray_threshold: float = 5.0
    #: Annealed-mean temperature T of decoding (Zhang: 0.38); decoding only, not in the checkpoint hash.
    temperature: float = 0.38
    #: The logits' stride relative to the input (Zhang: 4).
    output_stride: int = 4
    #: Channels of the dense head's hidden layers.
    head_width: int = 128
    #: Adam's learning rate (Zhang: 3e-5 over 450k iterations; higher for short budgets).
    lr: float = 1e-3
    #: Adam's weight decay (Zhang: 1e-3).
    weight_decay: float = 1e-3


@register_pretext("quantized")
class Quantized(Pretext):
    """Predict a distribution over quantised ab from L with soft-encoded, rebalanced cross-entropy (Zhang 2016)."""

    Config = QuantizedConfig
    inference_options = frozenset({"temperature"})

    def __init__(self, config: QuantizedConfig, encoder: EncoderSpec, data: DataInfo) -> None:
        super().__init__(config, encoder, data)
        if config.temperature <= 0:
            raise ValueError(f"quantized.temperature must be > 0, got {config.temperature}")
        self.encoder = encoder.build(in_chans=1)
        self.classifier = ABClassifier(
            self.encoder.out_channels, config.head_width, config.output_stride, rebalance=config.rebalance,
            rebalance_lambda=config.rebalance_lambda, rebalance_sigma=config.rebalance_sigma,
            neighbours=config.neighbours, sigma=config.sigma, gray_threshold=config.gray_threshold)
        bins = initial_bins(config.bins, config.grid_size, config.pts_in_hull, config.prior_probs)
        if bins is not None:
            self.classifier.install(bins)

    def prepare(self, batches: Iterable[dict[str, torch.Tensor]], runtime: Runtime) -> None:
        """Bins and prior from one streaming pass over the training data (skipped for files with a prior)."""
        prepare_bins(self.classifier, self.config.bins, batches, runtime, self.config.grid_size,
                          has_file_prior=bool(self.config.prior_probs))

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": torch.optim.Adam(self.parameters(), lr=self.config.lr, betas=(0.9, 0.99),
                                        weight_decay=self.config.weight_decay)}

    def logits(self, lightness: torch.Tensor) -> torch.Tensor:
        """Q logits at 1/``output_stride`` resolution from L (N, 1, H, W) in [0, 100]."""
        return self.classifier(self.encoder(normalize_l(lightness))[-1], tuple(lightness.shape[-2:]))

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        lab = rgb_to_lab(images_to_rgb(batch["image"]))
        return self.classifier.loss(self.logits(lab[:, :1]), lab[:, 1:])

    @torch.no_grad()
    def colorize(self, rgb: torch.Tensor) -> torch.Tensor:
        lightness = rgb_to_lab(rgb.float())[:, :1]
        ab = self.classifier.decode(self.logits(lightness), self.config.temperature)
        return merge_l_ab(lightness, ab)
