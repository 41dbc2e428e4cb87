"""Published reference numbers that ``sslbench table --reference KEY`` can show beside a benchmark's own rows.

Each :class:`PublishedTable` holds one paper's numbers as data, with where they come from (paper and table) and,
for each of its columns, the sslbench metric it corresponds to: the same quantity computed the same way (e.g.
Zhang's AuC and the ``colorization`` protocol's ``auc``). A column whose quantity sslbench does not compute, or
computes differently, maps to nothing and says why; it is never placed under a column it only resembles.

Corresponding is not comparable: every published number was measured on other data (ImageNet, PASCAL VOC), other
networks (AlexNet, VGG-16, ResNet-152) and far larger budgets than a benchmark run here. The table shows them in
their own block, in italics, as context for the order of magnitude and the ranking of methods, not as a row to
beat.

Table numbers are given where they were checked; ``table`` says so where they were not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PublishedColumn", "PublishedRow", "PublishedTable", "REFERENCES", "get_reference"]

UNVERIFIED_TABLE = "table number not verified"


@dataclass(frozen=True)
class PublishedColumn:
    """One published column: its name in the paper, unit, and the sslbench (protocol, metric) it corresponds to
    (None when there is none; ``note`` says why, or what differs)."""

    name: str
    unit: str
    protocol: str | None
    metric: str | None
    note: str = ""


@dataclass(frozen=True)
class PublishedRow:
    """One published method: its values by column name (a column it has no value for is absent)."""

    method: str
    values: dict[str, float]


@dataclass(frozen=True)
class PublishedTable:
    """One paper's numbers: citation, table, setting (data and network), columns and rows."""

    key: str
    citation: str
    table: str
    setting: str
    columns: tuple[PublishedColumn, ...]
    rows: tuple[PublishedRow, ...]
    caveats: tuple[str, ...] = field(default=())

    def column(self, name: str) -> PublishedColumn:
        return next(c for c in self.columns if c.name == name)

    @property
    def source(self) -> str:
        return f"{self.citation}, {self.table}"


ZHANG2016 = PublishedTable(
    key="zhang2016",
    citation="Zhang, Isola, Efros: Colorful Image Colorization, ECCV 2016",
    table="Table 1",
    setting="10k ImageNet validation images at 256 px; VGG-16 judge trained on ImageNet",
    columns=(
        PublishedColumn("AuC", "%", "colorization", "auc",
                        "AuC of the per-pixel ab error over thresholds 0..150 (the paper does not say whether the "
                        "area is the mean of the 151 points, as sslbench computes it, or a trapezoid)"),
        PublishedColumn("AuC rebal", "%", None, None,
                        "weighted by ImageNet's colour prior; sslbench's auc_rebal weights by the training split's "
                        "prior, a different number"),
        PublishedColumn("VGG top-1", "%", "semantic", "top1",
                        "top-1 of a fixed classifier on the recolourised images (Zhang: VGG-16 on ImageNet; "
                        "sslbench: the semantic protocol's judge)"),
    ),
    rows=(
        PublishedRow("ground truth", {"VGG top-1": 68.3}),
        PublishedRow("grayscale", {"AuC": 89.1, "AuC rebal": 58.0, "VGG top-1": 52.7}),
        PublishedRow("Zhang L2", {"AuC": 91.2, "AuC rebal": 64.4, "VGG top-1": 54.9}),
        PublishedRow("Zhang class", {"AuC": 91.6, "AuC rebal": 65.1, "VGG top-1": 56.6}),
        PublishedRow("Zhang full", {"AuC": 89.5, "AuC rebal": 67.3, "VGG top-1": 56.0}),
        PublishedRow("Larsson", {"AuC": 91.7, "AuC rebal": 65.9, "VGG top-1": 59.4}),
    ),
    caveats=("Zhang's ImageNet linear probes of AlexNet conv1..conv5 are not included: AlexNet's layers do not map "
             "onto the stages of sslbench's encoders.",),
)

SPLITBRAIN2017 = PublishedTable(
    key="splitbrain2017",
    citation="Zhang, Isola, Efros: Split-Brain Autoencoders, CVPR 2017",
    table=UNVERIFIED_TABLE,
    setting="AlexNet pretrained on ImageNet, fine-tuned on PASCAL VOC",
    columns=(
        PublishedColumn("VOC cls mAP", "%", "finetune_cls", "map",
                        "PASCAL VOC 2007 classification mAP after fine-tuning the whole network"),
        PublishedColumn("VOC det mAP", "%", None, None, "detection: sslbench has no detection protocol"),
        PublishedColumn("VOC seg mIoU", "%", "finetune_seg", "miou", "PASCAL VOC segmentation mIoU after fine-tuning"),
    ),
    rows=(
        PublishedRow("ImageNet labels", {"VOC cls mAP": 79.9, "VOC det mAP": 56.8, "VOC seg mIoU": 48.0}),
        PublishedRow("random", {"VOC cls mAP": 53.3, "VOC det mAP": 43.4, "VOC seg mIoU": 19.8}),
        PublishedRow("Zhang colorization", {"VOC cls mAP": 65.9, "VOC det mAP": 46.9, "VOC seg mIoU": 35.6}),
        PublishedRow("Split-Brain", {"VOC cls mAP": 67.1, "VOC det mAP": 46.7, "VOC seg mIoU": 36.0}),
        PublishedRow("Larsson", {"VOC seg mIoU": 38.4}),
    ),
)

LARSSON2017 = PublishedTable(
    key="larsson2017",
    citation="Larsson, Maire, Shakhnarovich: Colorization as a Proxy Task for Visual Understanding, CVPR 2017",
    table=UNVERIFIED_TABLE,
    setting="ResNet-152 pretrained by colorization on ImageNet, fine-tuned on PASCAL VOC",
    columns=(
        PublishedColumn("VOC07 cls mAP", "%", "finetune_cls", "map", "PASCAL VOC 2007 classification mAP"),
        PublishedColumn("VOC12 seg mIoU", "%", "finetune_seg", "miou", "PASCAL VOC 2012 segmentation mIoU"),
    ),
    rows=(PublishedRow("Larsson colorization", {"VOC07 cls mAP": 77.3, "VOC12 seg mIoU": 60.0}),),
)

TRENESKA2022 = PublishedTable(
    key="treneska2022",
    citation="Treneska et al.: GAN-Based Image Colorization for Self-Supervised Visual Feature Learning, "
             "Sensors 2022",
    table=UNVERIFIED_TABLE,
    setting="pix2pix-style cGAN colorizer trained on COCO; its U-Net generator fine-tuned in two phases on "
            "PASCAL VOC",
    columns=(
        PublishedColumn("VOC accuracy", "%", "finetune_cls", "exact_match",
                        "multi-label accuracy: the fraction of images whose predicted label set is exact"),
        PublishedColumn("VOC seg mIoU", "%", "finetune_seg", "miou", "PASCAL VOC segmentation mIoU"),
        PublishedColumn("PSNR", "dB", "colorization", "psnr", "PSNR of the recolourised sRGB image (max value 1)"),
        PublishedColumn("SSIM", "", "colorization", "ssim", "SSIM of the recolourised sRGB image"),
    ),
    rows=(
        PublishedRow("from scratch", {"VOC accuracy": 47.18, "VOC seg mIoU": 44.66}),
        PublishedRow("colorization pretraining", {"VOC accuracy": 52.83, "VOC seg mIoU": 47.07, "PSNR": 20.94,
                                                  "SSIM": 0.85}),
    ),
)

REFERENCES: dict[str, PublishedTable] = {t.key: t for t in (ZHANG2016, SPLITBRAIN2017, LARSSON2017, TRENESKA2022)}


def get_reference(key: str) -> PublishedTable:
    """The published table called ``key``; a ValueError listing the known keys otherwise."""
    try:
        return REFERENCES[key]
    except KeyError:
        raise ValueError(f"unknown reference {key!r}: choose from {', '.join(REFERENCES)}") from None
