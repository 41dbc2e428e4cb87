"""``splitbrain``: Split-Brain Autoencoders (Zhang, Isola & Efros, "Split-Brain Autoencoders: Unsupervised Learning
by Cross-Channel Prediction", CVPR 2017).

The network is split along its channels into two disjoint half-width sub-networks: one sees L and predicts ab, the
other sees ab and predicts L; the representation is the channel concatenation of both halves' features.

Follows the paper in:

* two half-width copies of the registered encoder (``width_mult=0.5``: 1-channel L input and 2-channel ab input), so
  the concatenated representation has the width of the full encoder;
* both cross-channel tasks as **classification** with cross-entropy (the paper's finding that classification beats
  regression for these tasks); one optimiser, the two losses summed;
* L → ab over quantised ab on the grid of Zhang 2016, with that paper's targets (ground truth point-sampled every 4th
  pixel, soft-encoded onto the 10 nearest bins with σ = 5, sparse) and its grayscale masking — the machinery is shared
  with ``quantized`` (:mod:`sslbench.pretexts._abbins`), bins from the data by default (``bins``), saved in the
  checkpoint;
* ab → L over ``l_bins`` equal bins of L on [0, 100] with hard (one-hot) targets; default 50 bins (bins of 2 L units).
  REFERENCE.md does not give the count; 50 is our reading of the paper and can be changed;
* input Lab: the L half gets ``normalize_l(L)`` (the one place L is normalised), the ab half gets ``ab / 110`` (the
  scale Zhang's networks use for ab).

Where sslbench departs, and why:

* **No class rebalancing by default** (``rebalance=False``): rebalancing is Zhang 2016's device for vivid colours in
  the graphics task; for a representation the plain classification loss is used (set ``rebalance=True`` for Zhang's
  weights).
* **Representation from RGB.** Protocols hand the representation RGB images; it converts them to Lab itself and feeds
  each half its channels of the same image, so downstream tasks see exactly what the paper's network saw (Lab).
* **Encoders without widths to halve.** timm variants have fixed widths (their factory rejects ``width_mult``). The
  default ``halves="half"`` then refuses to build, naming the way out: ``splitbrain.halves=full`` builds both halves
  at the encoder's full width, an explicit (and recorded) departure whose representation is twice the encoder's
  width — or choose a narrower timm variant to match the paper's budget.
* **Network and schedule.** The registered encoder replaces the paper's AlexNet; each half's deepest tap feeds a
  :class:`~sslbench.heads.DenseHead` predicting at 1/4 of the input (as Zhang 2016's network), targets are
  point-sampled to that size. Adam (β = (0.9, 0.99), weight decay 1e-3) at lr 1e-3 for short budgets.

``colorize`` uses the L → ab half with the annealed mean (T = 0.38) and the in-gamut merge every colorizer uses (``merge_l_ab``).
Logged terms: ``loss`` (the sum), ``loss_ab`` (L → ab), ``loss_l`` (ab → L), ``gray_fraction``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch.nn import functional as F

from sslbench.colour import AB_SCALE, normalize_l, rgb_to_lab
from sslbench.encoders.base import Encoder, Tap
from sslbench.errors import UsageError
from sslbench.pretext import DataInfo, EncoderSpec, Pretext, Representation, images_to_rgb, merge_l_ab
from sslbench.pretexts._abbins import ABClassifier, hard_l_targets, initial_bins, prepare_bins
from sslbench.heads import DenseHead, point_sample
from sslbench.registry import register_pretext
from sslbench.runtime import Runtime


@dataclass
class SplitBrainConfig:
    #: ``half``: each sub-network at half the encoder's width (the paper); ``full``: both at full width.
    halves: str = "half"
    #: Where the ab bins of the L -> ab half come from: ``data``, ``gamut`` or ``files`` (as ``quantized``).
    bins: str = "data"
    #: Side of an ab bin, in ab units (Zhang: 10).
    grid_size: int = 10
    #: Zhang's pts_in_hull.npy for ``bins=files``; None: not used.
    pts_in_hull: str | None = None
    #: Zhang's prior_probs.npy for ``bins=files``; None: the prior is counted from the data.
    prior_probs: str | None = None
    #: Rebalance the ab classes by their inverse prior (Split-Brain: off).
    rebalance: bool = False
    #: Weight of the uniform distribution mixed into the prior before inverting it.
    rebalance_lambda: float = 0.5
    #: Gaussian smoothing (ab units) of the prior before rebalancing.
    rebalance_sigma: float = 5.0
    #: Bins each ab target is soft-encoded onto.
    neighbours: int = 10
    #: Width (ab units) of the soft-encoding Gaussian.
    sigma: float = 5.0
    #: Images with no pixel whose |a| or |b| exceeds this are grayscale and left out of the ab loss.
    gray_threshold: float = 5.0
    #: Equal bins of L on [0, 100] that the ab -> L half classifies into (hard targets).
    l_bins: int = 50
    #: Annealed-mean temperature T of decoding ab; decoding only, not in the checkpoint hash.
    temperature: float = 0.38
    #: The logits' stride relative to the input.
    output_stride: int = 4
    #: Channels of each half's dense head.
    head_width: int = 64
    #: Adam's learning rate.
    lr: float = 1e-3
    #: Adam's weight decay.
    weight_decay: float = 1e-3


class SplitBrainRepresentation(Representation):
    """RGB -> Lab -> (L half on normalised L) ⊕ (ab half on ab / 110), concatenated along channels at every tap."""

    def __init__(self, l_encoder: Encoder, ab_encoder: Encoder) -> None:
        super().__init__()
        if len(l_encoder.taps) != len(ab_encoder.taps):
            raise ValueError(f"split-brain halves tap {len(l_encoder.taps)} vs {len(ab_encoder.taps)} maps")
        taps = []
        for left, right in zip(l_encoder.taps, ab_encoder.taps):
            if (left.name, left.stride) != (right.name, right.stride):
                raise ValueError(f"split-brain halves disagree on a tap: {left} vs {right}")
            taps.append(Tap(left.name, left.channels + right.channels, left.stride))
        self.l_encoder = l_encoder
        self.ab_encoder = ab_encoder
        self.taps = tuple(taps)

    def forward(self, rgb: torch.Tensor) -> list[torch.Tensor]:
        lab = rgb_to_lab(rgb)
        l_maps = self.l_encoder(normalize_l(lab[:, :1]))
        ab_maps = self.ab_encoder(lab[:, 1:] / AB_SCALE)
        return [torch.cat([a, b], dim=1) for a, b in zip(l_maps, ab_maps)]


def build_half(spec: EncoderSpec, in_chans: int, halves: str) -> tuple[Encoder, bool]:
    """One sub-network: at half the encoder's width (``halves="half"``, the paper) or at its full width
    (``halves="full"``, chosen explicitly); returns (encoder, halved)."""
    if halves == "full":
        return spec.build(in_chans=in_chans), False
    width = spec.options.get("width_mult", 1.0)
    try:
        return spec.build(in_chans=in_chans, width_mult=0.5 * width), True
    except ValueError as exc:
        if "width_mult" not in str(exc):
            raise
        raise UsageError(f"splitbrain: encoder {spec.name!r} has fixed widths and cannot be halved ({exc}); set "
                         "splitbrain.halves=full to build both halves at full width (the representation is then "
                         "twice the encoder's width), or choose a narrower encoder") from exc


@register_pretext("splitbrain")
class SplitBrain(Pretext):
    """Two half-width sub-networks: L -> ab and ab -> L by classification; features concatenated (Zhang 2017)."""

    Config = SplitBrainConfig
    inference_options = frozenset({"temperature"})

    def __init__(self, config: SplitBrainConfig, encoder: EncoderSpec, data: DataInfo) -> None:
        super().__init__(config, encoder, data)
        if config.l_bins < 2:
            raise ValueError(f"splitbrain.l_bins must be >= 2, got {config.l_bins}")
        if config.temperature <= 0:
            raise ValueError(f"splitbrain.temperature must be > 0, got {config.temperature}")
        #: The L -> ab half: it honours the Encoder contract (normalised L in), so it is the pretext's ``encoder``.
        if config.halves not in ("half", "full"):
            raise UsageError(f"splitbrain.halves={config.halves!r}: choose half (the paper) or full")
        self.encoder, halved_l = build_half(encoder, 1, config.halves)
        self.ab_encoder, halved_ab = build_half(encoder, 2, config.halves)
        self.half_width = halved_l and halved_ab
        self.ab_classifier = ABClassifier(
            self.encoder.out_channels, config.head_width, config.output_stride, rebalance=config.rebalance,
            rebalance_lambda=config.rebalance_lambda, rebalance_sigma=config.rebalance_sigma,
            neighbours=config.neighbours, sigma=config.sigma, gray_threshold=config.gray_threshold)
        self.l_head = DenseHead(self.ab_encoder.out_channels, config.l_bins, config.head_width)
        bins = initial_bins(config.bins, config.grid_size, config.pts_in_hull, config.prior_probs)
        if bins is not None:
            self.ab_classifier.install(bins)

    def prepare(self, batches: Iterable[dict[str, torch.Tensor]], runtime: Runtime) -> None:
        """ab bins and prior from one streaming pass over the training data (skipped for files with a prior)."""
        prepare_bins(self.ab_classifier, self.config.bins, batches, runtime, self.config.grid_size,
                          has_file_prior=bool(self.config.prior_probs))

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": torch.optim.Adam(self.parameters(), lr=self.config.lr, betas=(0.9, 0.99),
                                        weight_decay=self.config.weight_decay)}

    def ab_logits(self, lightness: torch.Tensor) -> torch.Tensor:
        """Q ab logits at 1/``output_stride`` resolution from L (N, 1, H, W) in [0, 100]."""
        return self.ab_classifier(self.encoder(normalize_l(lightness))[-1], tuple(lightness.shape[-2:]))

    def l_logits(self, ab: torch.Tensor) -> torch.Tensor:
        """``l_bins`` L logits at 1/``output_stride`` resolution from ab (N, 2, H, W) in Lab units."""
        size = self.ab_classifier.output_size(tuple(ab.shape[-2:]))
        return self.l_head(self.ab_encoder(ab / AB_SCALE)[-1], size)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        lab = rgb_to_lab(images_to_rgb(batch["image"]))
        lightness, ab = lab[:, :1], lab[:, 1:]
        loss_ab, logs = self.ab_classifier.loss(self.ab_logits(lightness), ab)
        target_l = hard_l_targets(point_sample(lightness, self.config.output_stride), self.config.l_bins)
        loss_l = F.cross_entropy(self.l_logits(ab).float(), target_l)
        return loss_ab + loss_l, {"loss_ab": loss_ab.detach(), "loss_l": loss_l.detach(), **logs}

    def representation(self) -> SplitBrainRepresentation:
        return SplitBrainRepresentation(self.encoder, self.ab_encoder)

    @torch.no_grad()
    def colorize(self, rgb: torch.Tensor) -> torch.Tensor:
        lightness = rgb_to_lab(rgb.float())[:, :1]
        ab = self.ab_classifier.decode(self.ab_logits(lightness), self.config.temperature)
        return merge_l_ab(lightness, ab)
