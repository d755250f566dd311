"""Feature normalization from dataset statistics, for numpy arrays and torch tensors alike.

Every mode is an affine map `(x - offset) / scale`, so `unnormalize` is its exact inverse and
the same two vectors serve training, inference and serving. Dimensions that barely vary (a
gripper that never moves in a dataset, a constant state entry) get scale 1 instead of dividing
by ~0, which would turn sensor noise into huge inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

import numpy as np
import torch

ArrayLike = TypeVar("ArrayLike", np.ndarray, torch.Tensor)


class NormMode(StrEnum):
    IDENTITY = "identity"
    MEAN_STD = "mean_std"  # zero mean, unit variance
    QUANTILE = "quantile"  # q01 -> -1, q99 -> +1 (pi0.5 style; robust to outliers)
    MIN_MAX = "min_max"  # min -> -1, max -> +1


# The statistics each mode reads (data.stats.check_stats requires them of a normalized feature).
MODE_STATS: dict[NormMode, tuple[str, ...]] = {
    NormMode.IDENTITY: (),
    NormMode.MEAN_STD: ("mean", "std"),
    NormMode.QUANTILE: ("q01", "q99"),
    NormMode.MIN_MAX: ("min", "max"),
}


@dataclass(frozen=True)
class FeatureNormalizer:
    """`normalize(x) = (x - offset) / scale` over the last dimension(s) of x."""

    offset: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_stats(
        cls, stats: Mapping[str, np.ndarray], mode: NormMode | str, eps: float = 1e-6
    ) -> FeatureNormalizer:
        mode = NormMode(mode)
        if mode is NormMode.IDENTITY:
            reference = np.asarray(stats["mean"], dtype=np.float64)
            return cls(np.zeros_like(reference), np.ones_like(reference))
        needed = MODE_STATS[mode]
        missing = [name for name in needed if name not in stats]
        if missing:
            raise KeyError(
                f"{mode.value} normalization needs stats {list(needed)}; missing {missing}"
            )
        first, second = (np.asarray(stats[name], dtype=np.float64) for name in needed)
        if mode is NormMode.MEAN_STD:
            offset, scale = first, second
        else:
            offset, scale = (first + second) / 2, (second - first) / 2
        scale = np.where(scale < eps, 1.0, scale)
        return cls(offset, scale)

    def normalize(self, x: ArrayLike) -> ArrayLike:
        offset, scale = self._like(x)
        return (x - offset) / scale

    def unnormalize(self, x: ArrayLike) -> ArrayLike:
        offset, scale = self._like(x)
        return x * scale + offset

    def _like(self, x: ArrayLike) -> tuple[ArrayLike, ArrayLike]:
        if isinstance(x, torch.Tensor):
            return (
                torch.as_tensor(self.offset, dtype=x.dtype, device=x.device),
                torch.as_tensor(self.scale, dtype=x.dtype, device=x.device),
            )
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
        return self.offset.astype(dtype), self.scale.astype(dtype)


class Normalizer:
    """Normalizers for several features, e.g. {"observation.state": mean_std, "action": quantile}."""

    def __init__(
        self,
        stats: Mapping[str, Mapping[str, np.ndarray]],
        modes: Mapping[str, NormMode | str],
        eps: float = 1e-6,
    ) -> None:
        missing = [key for key in modes if key not in stats]
        if missing:
            raise KeyError(f"no statistics for feature(s) {missing}; stats cover {sorted(stats)}")
        self.features = {
            key: FeatureNormalizer.from_stats(stats[key], mode, eps) for key, mode in modes.items()
        }

    def normalize(self, batch: Mapping[str, ArrayLike]) -> dict[str, ArrayLike]:
        """A copy of `batch` with the configured features normalized and the rest untouched."""
        return {
            key: self.features[key].normalize(value) if key in self.features else value
            for key, value in batch.items()
        }

    def unnormalize(self, batch: Mapping[str, ArrayLike]) -> dict[str, ArrayLike]:
        return {
            key: self.features[key].unnormalize(value) if key in self.features else value
            for key, value in batch.items()
        }
