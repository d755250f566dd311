"""Per-feature statistics in LeRobot's stats.json format: mean/std/min/max/count and the
quantiles q01/q10/q50/q90/q99.

Three kinds, each computed where it is cheapest and exact:
- numeric features (state, action, gripper trace, LeRobot's index columns): over every frame of
  the stored parquet columns (`feature_stats`);
- cameras: per channel, on pixel values scaled to [0, 1], shape (3, 1, 1) as LeRobot expects
  (its `use_imagenet_stats` and edit tools need an entry per camera). They are computed by the
  writer from the frames passing through (`image_stats`), so video is never decoded for them;
- a whole dataset's camera statistics, from its per-episode ones (`aggregate_stats`): mean, std,
  min, max and count combine exactly; a quantile is the frame-weighted mean of the episodes'
  quantiles, the rule LeRobot's own `aggregate_stats` uses, so both tools agree on edited datasets.

`check_stats` is the one check of statistics that something will normalize with (a dataset's
meta/stats.json before training, a checkpoint's stats.json at export and at load): numbers,
finite, consistent (std >= 0, min <= mean, quantiles <= max), and for the features named with
their size (state, action) the right length, a plausible magnitude (`STATS_BOUND`) and some spread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from data.features import Feature

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
STAT_NAMES = ("mean", "std", "min", "max", *QUANTILES, "count")

Stats = dict[str, list]  # one feature: {stat name: (nested) list of numbers}

# The largest |value| a statistic of a normalized feature may have. State and action are in robot
# units (metres, radians, gripper -1..1), where real values are below ~10; 1e6 leaves room for any
# unit choice (millimetres, encoder ticks) while refusing what a flipped exponent bit or an
# unscaled sensor produces (one checkpoint with std 1e30 served actions of magnitude 4.5e29).
STATS_BOUND = 1e6
REQUIRED_STATS = ("mean", "std", "min", "max")  # what every normalized feature must have


class StatsError(ValueError):
    """Statistics that would normalize wrongly; the message names the source file, the feature
    and the statistic, and what was expected."""


def feature_stats(values: np.ndarray) -> Stats:
    """Statistics over frames of one feature; `values` is (N, ...) and stats keep the frame shape."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if len(values) == 0:
        raise ValueError("cannot compute statistics of a feature with no frames")
    quantiles = np.quantile(values, list(QUANTILES.values()), axis=0)
    return {
        "mean": values.mean(axis=0).tolist(),
        "std": values.std(axis=0).tolist(),
        "min": values.min(axis=0).tolist(),
        "max": values.max(axis=0).tolist(),
        **{name: quantiles[i].tolist() for i, name in enumerate(QUANTILES)},
        "count": [int(len(values))],
    }


def compute_stats(columns: Mapping[str, np.ndarray]) -> dict[str, Stats]:
    """Statistics for every numeric feature given as (N, ...) arrays."""
    return {key: feature_stats(values) for key, values in columns.items()}


def image_stats(frames: np.ndarray) -> Stats:
    """Per-channel statistics of uint8 frames (T, H, W, 3), in [0, 1], each of shape (3, 1, 1).

    Exact, over every pixel of every frame: uint8 has 256 levels, so one histogram per channel
    gives the mean, spread and the quantiles (numpy's linear interpolation) without sorting.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"image statistics need uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}"
        )
    if len(frames) == 0:
        raise ValueError("cannot compute statistics of a camera with no frames")
    histograms = np.stack(
        [np.bincount(frames[..., channel].ravel(), minlength=256) for channel in range(3)]
    )  # (3, 256) pixel counts per level
    levels = np.arange(256, dtype=np.float64)
    total = histograms[0].sum()
    mean = histograms @ levels / total  # (3,)
    variance = histograms @ levels**2 / total - mean**2
    cumulative = np.cumsum(histograms, axis=1)  # (3, 256)
    seen = histograms > 0
    per_channel = {
        "mean": mean,
        "std": np.sqrt(np.maximum(variance, 0.0)),
        "min": seen.argmax(axis=1).astype(np.float64),
        "max": 255.0 - seen[:, ::-1].argmax(axis=1),
        **{
            name: np.array([_histogram_quantile(row, q) for row in cumulative])
            for name, q in QUANTILES.items()
        },
    }
    stats: Stats = {
        name: (values / 255.0).reshape(3, 1, 1).tolist() for name, values in per_channel.items()
    }
    stats["count"] = [int(len(frames))]
    return stats


def _histogram_quantile(cumulative: np.ndarray, q: float) -> float:
    """np.quantile(values, q) (linear interpolation) from the cumulative counts of levels 0..255."""
    position = q * (cumulative[-1] - 1)
    below = int(np.floor(position))
    above = min(below + 1, int(cumulative[-1]) - 1)
    low = int(np.searchsorted(cumulative, below, side="right"))
    high = int(np.searchsorted(cumulative, above, side="right"))
    return low + (position - below) * (high - low)


def aggregate_stats(parts: Sequence[Mapping[str, object]]) -> Stats:
    """One feature's statistics over several disjoint parts (episodes), weighted by their counts.

    mean/std/min/max/count are exact (std by the parallel-variance rule); quantiles are the
    count-weighted mean of the parts' quantiles, as LeRobot aggregates them.
    """
    if not parts:
        raise ValueError("cannot aggregate the statistics of zero parts")
    arrays = [{name: np.asarray(part[name], dtype=np.float64) for name in part} for part in parts]
    missing = sorted({name for name in STAT_NAMES for part in arrays if name not in part})
    if missing:
        raise ValueError(f"every part needs {list(STAT_NAMES)}; some lack {missing}")
    counts = np.array([part["count"].reshape(-1)[0] for part in arrays])
    total = counts.sum()
    weights = (counts / total).reshape(-1, *([1] * arrays[0]["mean"].ndim))

    def stacked(name: str) -> np.ndarray:
        return np.stack([part[name] for part in arrays])

    mean = (stacked("mean") * weights).sum(axis=0)
    variance = ((stacked("std") ** 2 + (stacked("mean") - mean) ** 2) * weights).sum(axis=0)
    return {
        "mean": mean.tolist(),
        "std": np.sqrt(variance).tolist(),
        "min": stacked("min").min(axis=0).tolist(),
        "max": stacked("max").max(axis=0).tolist(),
        **{name: (stacked(name) * weights).sum(axis=0).tolist() for name in QUANTILES},
        "count": [int(total)],
    }


def episode_stats(
    features: Mapping[str, Feature],
    columns: Mapping[str, Any],
    index_columns: Mapping[str, np.ndarray],
) -> dict[str, Stats]:
    """One episode's statistics: every numeric feature and camera (`columns`: (T, ...) arrays,
    cameras as uint8 (T, H, W, 3)) and LeRobot's index columns; strings have none."""
    stats = {
        key: image_stats(np.asarray(columns[key]))
        if feature.is_visual
        else feature_stats(columns[key])
        for key, feature in features.items()
        if feature.is_visual or feature.is_numeric
    }
    stats.update({key: feature_stats(values) for key, values in index_columns.items()})
    return stats


# Per-episode statistics live in meta/episodes/*.parquet as one column per feature and statistic,
# `stats/<feature>/<stat>`, which is where LeRobot's edit tools (delete_episodes, split_dataset,
# merge_datasets) read them to rebuild stats.json.
EPISODE_STATS_PREFIX = "stats/"


def episode_stats_columns(stats: Mapping[str, Mapping[str, list]]) -> dict[str, list]:
    """{feature: {stat: value}} -> {"stats/<feature>/<stat>": value} for one episodes-table row."""
    return {
        f"{EPISODE_STATS_PREFIX}{key}/{name}": value
        for key, feature in stats.items()
        for name, value in feature.items()
    }


def episode_stats_from_row(row: Mapping[str, object]) -> dict[str, dict[str, object]]:
    """The inverse of `episode_stats_columns` on one episodes-table row (other columns ignored)."""
    stats: dict[str, dict[str, object]] = {}
    for column, value in row.items():
        if not column.startswith(EPISODE_STATS_PREFIX) or value is None:
            continue
        key, _, name = column[len(EPISODE_STATS_PREFIX) :].rpartition("/")
        stats.setdefault(key, {})[name] = value
    return stats


def check_stats(
    stats: Mapping[str, Any],
    source: str,
    sizes: Mapping[str, int],
    required: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """`stats` as float64 arrays, or a StatsError naming `source`, the feature and the stat.

    Every feature's statistics must be numbers, finite and consistent (std >= 0, min <= max,
    min <= mean and quantiles <= max, quantiles in order; count >= 1). The features in `sizes`
    (those a policy normalizes, e.g. {"action": 7, "observation.state": 8}) must be present with
    REQUIRED_STATS and `required[feature]`, each of `size` values, |value| <= STATS_BOUND, and
    spread in at least one dimension. A single constant dimension is allowed (a gripper that never
    moved): normalization gives it scale 1 (data/normalize.py).
    """
    if not isinstance(stats, Mapping):
        raise StatsError(f"{source}: expected {{feature: {{stat: list of numbers}}}}")
    checked = {}
    for feature, feature_stats in stats.items():
        where = f"{source}: stats[{feature!r}]"
        if not isinstance(feature_stats, Mapping):
            raise StatsError(f"{where} is not a mapping of statistics")
        size = sizes.get(feature)
        arrays = {
            name: _checked_values(values, f"{where}[{name!r}]", None if name == "count" else size)
            for name, values in feature_stats.items()
        }
        _check_consistent(arrays, where)
        if size is not None:
            needed = [*REQUIRED_STATS, *(required or {}).get(feature, ())]
            missing = [name for name in dict.fromkeys(needed) if name not in arrays]
            if missing:
                raise StatsError(
                    f"{where} is missing {', '.join(map(repr, missing))}; a normalized feature "
                    f"needs {list(dict.fromkeys(needed))}"
                )
            for name in ("std", "max"):
                spread = arrays["std"] if name == "std" else arrays["max"] - arrays["min"]
                if not (spread > 0).any():
                    raise StatsError(
                        f"{where}[{name!r}]: no spread in any of the {size} dimensions "
                        f"({'std' if name == 'std' else 'max - min'} is 0 everywhere): "
                        f"these are not the statistics of a recorded feature"
                    )
        checked[str(feature)] = arrays
    missing = [feature for feature in sizes if feature not in checked]
    if missing:
        raise StatsError(
            f"{source}: no statistics for {', '.join(map(repr, missing))} "
            f"(they cover {sorted(checked)})"
        )
    return checked


def _checked_values(values: Any, where: str, size: int | None) -> np.ndarray:
    """One statistic as float64: numbers, finite, and with `size`: (size,) and within bounds."""
    try:
        raw = np.asarray(values)
    except ValueError as error:  # ragged nesting
        raise StatsError(f"{where} is not a (nested) list of numbers ({error})") from None
    if raw.dtype.kind not in "iuf" or raw.size == 0:
        raise StatsError(f"{where} is not a (nested) list of numbers: {values!r:.80}")
    array = raw.astype(np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise StatsError(
            f"{where} has non-finite values ({array[index]} at index {list(index)}); "
            "statistics must be finite numbers"
        )
    if size is None:
        return array
    if array.shape != (size,):
        raise StatsError(
            f"{where} has shape {array.shape}, expected {size} values (one per dimension)"
        )
    largest = float(np.abs(array).max())
    if largest > STATS_BOUND:
        raise StatsError(
            f"{where} has |values| up to {largest:g}, beyond the plausible bound {STATS_BOUND:g} "
            "(data.stats.STATS_BOUND): a corrupt file or a unit error"
        )
    return array


def _check_consistent(arrays: Mapping[str, np.ndarray], where: str) -> None:
    """Relations every set of statistics satisfies, whatever the feature."""

    def refuse(name: str, condition: np.ndarray, what: str) -> None:
        if not condition.all():
            index = [int(i) for i in np.argwhere(~condition)[0]]
            raise StatsError(f"{where}[{name!r}] {what} at index {index}")

    shapes = {name: array.shape for name, array in arrays.items() if name != "count"}
    if len(set(shapes.values())) > 1:
        raise StatsError(f"{where}: its statistics have different shapes {shapes}")
    if "count" in arrays:
        refuse("count", arrays["count"] >= 1, "must be >= 1 (frames counted)")
    if "std" in arrays:
        refuse("std", arrays["std"] >= 0, f"must be >= 0, found {arrays['std'].min():g}")
    if "min" not in arrays or "max" not in arrays:
        return
    low, high = arrays["min"], arrays["max"]
    refuse("max", high >= low, "is below 'min'")
    slack = 1e-9 + 1e-6 * np.maximum(np.abs(low), np.abs(high))  # float rounding of means
    ordered = [name for name in ("mean", *QUANTILES) if name in arrays]
    for name in ordered:
        refuse(name, (arrays[name] >= low - slack) & (arrays[name] <= high + slack),
               "lies outside ['min', 'max']")  # fmt: skip
    quantiles = [name for name in QUANTILES if name in arrays]
    for lower, upper in zip(quantiles, quantiles[1:], strict=False):
        refuse(upper, arrays[upper] >= arrays[lower] - slack, f"is below {lower!r}")
