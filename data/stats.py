"""Per-feature statistics (mean/std/min/max/q01/q99/count) from numeric parquet columns.

Computed from the stored columns only: images and video are never decoded, because images are
normalized by the vision tower's own processor, not by dataset statistics.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

STAT_NAMES = ("mean", "std", "min", "max", "q01", "q99", "count")


def feature_stats(values: np.ndarray) -> dict[str, list[float]]:
    """Statistics over frames of one feature; `values` is (N, ...) and stats keep the frame shape."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if len(values) == 0:
        raise ValueError("cannot compute statistics of a feature with no frames")
    q01, q99 = np.quantile(values, [0.01, 0.99], axis=0)
    return {
        "mean": values.mean(axis=0).tolist(),
        "std": values.std(axis=0).tolist(),
        "min": values.min(axis=0).tolist(),
        "max": values.max(axis=0).tolist(),
        "q01": q01.tolist(),
        "q99": q99.tolist(),
        "count": [int(len(values))],
    }


def compute_stats(columns: Mapping[str, np.ndarray]) -> dict[str, dict[str, list[float]]]:
    """Statistics for every numeric feature given as (N, ...) arrays."""
    return {key: feature_stats(values) for key, values in columns.items()}
