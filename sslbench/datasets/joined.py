"""Several splits of one adapter seen as one, for pretraining on e.g. STL-10's ``train+unlabeled``.

Items keep only the keys every part provides (STL-10's unlabeled images have no ``label``), so batches collate.
"""

from __future__ import annotations

import os
from typing import Any

from torch.utils.data import ConcatDataset

from sslbench.datasets.base import ImageDataset

__all__ = ["JoinedSplits", "split_parts"]


def split_parts(split: str) -> list[str]:
    """``"train+unlabeled"`` -> ``["train", "unlabeled"]``."""
    return [part.strip() for part in split.split("+") if part.strip()]


class JoinedSplits(ImageDataset):
    """The concatenation of ``parts`` (adapters of one dataset, one per split)."""

    def __init__(self, parts: list[ImageDataset]) -> None:
        first = parts[0]
        self.parts = parts
        self.name = first.name
        self.split = "+".join(str(getattr(p, "split", "?")) for p in parts)
        self.provides = frozenset.intersection(*(frozenset(getattr(p, "provides", frozenset())) for p in parts))
        self.synthetic = first.synthetic
        self.class_names = tuple(first.class_names)
        self.mask_class_names = tuple(first.mask_class_names)
        self.root = first.root
        self.image_size = first.image_size
        # Keys every part's items carry (STL-10's unlabeled split declares `label` like its adapter but has none),
        # read off one item of each part, so that batches mixing the parts collate.
        self._keys = set.intersection(*(set(part[0]) for part in parts if len(part))) if any(map(len, parts)) \
            else {"image"}
        self.provides = frozenset(self.provides & self._keys)
        self._joined = ConcatDataset(parts)

    def __len__(self) -> int:
        return len(self._joined)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self._joined[index]
        return {k: v for k, v in item.items() if k in self._keys}

    def fingerprint(self, memo_dir: str | os.PathLike[str] | None = None) -> str:
        from sslbench.datasets.fingerprint import data_fingerprint

        return "+".join(data_fingerprint(part, memo_dir) for part in self.parts)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "parts": [p.describe() for p in self.parts]}
