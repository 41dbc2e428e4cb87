"""Registered dataset adapters (``synthetic`` — the embedded default —, ``cifar10``, ``stl10``, ``imagefolder``,
``voc2007``, ``voc2012``, ``camvid``, ``coco``). Modules are imported only when their dataset is created."""

from __future__ import annotations

from typing import Any

from sslbench.registry import DATASETS, list_datasets

__all__ = ["create_dataset", "list_datasets"]


def create_dataset(name: str, **kwargs: Any) -> Any:
    """Build the registered dataset adapter ``name`` with ``root``, ``split``, ``image_size``, ``subset``, ``seed``…"""
    return DATASETS.create(name, **kwargs)
