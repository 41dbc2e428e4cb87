"""``semantic``: Zhang et al. (2016)'s semantic-interpretability test: does a fixed classifier recognise recolourised
images?

A fixed judge classifier labels three versions of every evaluated image: the ground-truth colour image, its grayscale
version (L kept, ab = 0, back to sRGB) and the pretext's recolorization (``colorize`` from the image's L). Reported:
top-1 (%) of each, ``top1`` (the pretext), ``reference/gray/top1`` and ``reference/ground_truth/top1``, plus what
identifies the judge (``judge/source``, ``judge/hash`` for a harness-trained one). Zhang's table (ImageNet val,
VGG-16): ground truth 68.3, grayscale 52.7, theirs 56.0. A colourisation that helps the judge lands between gray and
ground truth.

Where sslbench follows the paper, and where it departs:

- The judge. Zhang used an off-the-shelf VGG-16 trained on ImageNet colour images. sslbench's datasets are not
  ImageNet, so by default the judge is trained by the harness on the dataset's TRAIN colour images with their labels
  (``judge_model`` = ``vgg_small`` with three input channels, ``judge_epochs`` of Adam with a cosine schedule, flip and
  translation augmentation; deterministic by ``judge_seed``, the run's seed by default) and cached under the shared
  cache root (``<cache>/judges/<hash>/judge.pt``, the hash covering the training data's fingerprint, every judge
  option, the seed and the precision; ``judge_cache`` overrides the folder; see :mod:`sslbench.protocols._judge`),
  so every pretext of a run is judged by the same classifier, trained once. ``--eval-epochs`` does not change it
  (the judge is not a probe of the pretext). To follow the paper literally, give an ImageNet classifier as a local
  file: ``judge_model=torchvision/vgg16``, ``judge_weights=PATH`` (a state dict; sslbench never downloads),
  ``judge_input_size=224``, ``judge_num_classes=1000`` and a ``judge_class_map`` from the dataset's classes to the
  judge's (the best logit among a class's judge classes counts; without a map the judge's classes must be the
  dataset's). Images are normalised with the ImageNet mean/std (``judge_normalize``) in both modes.
- Images are judged at the dataset's resolution (``judge_input_size`` resizes them, bilinear with antialiasing);
  ``max_images`` (0: all) takes a fixed, seed-independent subset of the evaluation split. ``colorize`` runs outside
  autocast; the judge inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sslbench.protocols._judge import JudgeConfig, eval_loader, eval_subset, get_judge, gray_rgb
from sslbench.pretext import Pretext, images_to_rgb
from sslbench.progress import Progress
from sslbench.protocol import EvalData, Protocol
from sslbench.registry import register_protocol
from sslbench.runtime import Runtime

__all__ = ["SemanticConfig", "SemanticProtocol"]

ROWS = ("pretext", "gray", "ground_truth")


@dataclass
class SemanticConfig(JudgeConfig):
    """Options of the ``semantic`` protocol: the judge's (:class:`sslbench.protocols._judge.JudgeConfig`) and these."""

    #: Judge at most this many images of the evaluation split (0: all), a fixed subset.
    max_images: int = 0


@register_protocol("semantic")
class SemanticProtocol(Protocol):
    """A fixed judge classifies ground-truth, grayscale and recolourised images: top-1 of each."""

    requires = frozenset({"colorize", "label"})
    Config = SemanticConfig
    headline = "top1"

    @torch.no_grad()
    def evaluate(self, pretext: Pretext, data: EvalData, runtime: Runtime, progress: Progress) -> dict[str, Any]:
        cfg: SemanticConfig = self.config
        judge, info = get_judge(cfg, data, runtime, progress)
        correct = torch.zeros(len(ROWS), dtype=torch.long, device=runtime.device)
        total = 0
        loader = eval_loader(eval_subset(data.test, cfg.max_images), data.batch_size, runtime)
        for batch in progress.track(runtime.batches(loader), "semantic", total=len(loader)):
            rgb = images_to_rgb(batch["image"])
            recolored = pretext.colorize(rgb).float().clamp(0.0, 1.0)
            if recolored.shape != rgb.shape:
                raise ValueError(f"colorize returned shape {tuple(recolored.shape)} for input {tuple(rgb.shape)}")
            versions = torch.cat([recolored, gray_rgb(rgb), rgb])
            with runtime.autocast():
                predicted = judge(versions).argmax(dim=1).view(len(ROWS), rgb.shape[0])
            correct += (predicted == batch["label"].view(1, -1)).sum(dim=1)
            total += rgb.shape[0]
        top1 = (100.0 * correct.double() / max(total, 1)).tolist()
        metrics: dict[str, Any] = {"top1": top1[0], "reference/gray/top1": top1[1],
                                   "reference/ground_truth/top1": top1[2], "judge/source": info["source"]}
        if "hash" in info:
            metrics["judge/hash"] = info["hash"]
        return metrics
