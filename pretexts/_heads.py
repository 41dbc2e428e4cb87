"""Kept importable for code written against it: the heads now live in :mod:`sslbench.heads`, their public place."""

from sslbench.heads import ClassifierHead, DenseHead, point_sample

__all__ = ["DenseHead", "ClassifierHead", "point_sample"]
