"""What a metric's name says about it: whether a table shows it by default, its unit, whether lower is better and
how many decimals it gets. Every metric is higher-is-better unless its name ends in one of
:data:`LOWER_IS_BETTER`."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["HIDDEN_LEAVES", "HIDDEN_ROOTS", "LOWER_IS_BETTER", "PERCENT_LEAVES", "DB_LEAVES", "FINE_LEAVES",
           "shown_by_default", "is_number", "is_metric_value", "leaf_digits"]

#: Bookkeeping kept in records but left out of tables unless asked for with ``metrics``: feature sizes,
#: training-loop statistics, judge provenance.
HIDDEN_LEAVES = frozenset({"dims", "val_top1"})
HIDDEN_ROOTS = frozenset({"train", "judge"})
#: Metric leaves where a lower number is better (none yet; errors or distances would go here).
LOWER_IS_BETTER: frozenset[str] = frozenset()
#: Metric leaves in percent and in decibels; SSIM and colourfulness are plain numbers.
PERCENT_LEAVES = frozenset({"top1", "val_top1", "map", "miou", "auc", "auc_rebal", "exact_match", "pixel_acc", "ap",
                            "iou"})
DB_LEAVES = frozenset({"psnr"})
#: Leaves shown with at least three decimals (values in [0, 1]).
FINE_LEAVES = frozenset({"ssim"})


def shown_by_default(metric: str) -> bool:
    parts = metric.split("/")
    return parts[-1] not in HIDDEN_LEAVES and parts[0] not in HIDDEN_ROOTS


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_metric_value(value: Any) -> bool:
    """A number, or null (a metric that was not finite): what a table column holds. Text such as
    ``best/layer`` is not."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def leaf_digits(leaf: str, digits: int) -> int:
    """The decimals a cell of metric ``leaf`` is shown (and ranked) with, ``digits`` asked for."""
    return max(digits, 3) if leaf in FINE_LEAVES else digits
