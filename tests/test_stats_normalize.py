"""Dataset statistics against numpy, and normalizers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.normalize import FeatureNormalizer, Normalizer, NormMode
from data.reader import LeRobotDatasetReader
from data.stats import feature_stats


def test_stats_match_numpy_on_known_data() -> None:
    values = np.arange(101, dtype=np.float32)[:, None] * np.array([1.0, -2.0], dtype=np.float32)
    stats = feature_stats(values)
    assert stats["mean"] == [50.0, -100.0]
    assert stats["min"] == [0.0, -200.0] and stats["max"] == [100.0, 0.0]
    assert stats["q01"] == pytest.approx([1.0, -198.0]) and stats["q99"] == pytest.approx(
        [99.0, -2.0]
    )
    assert stats["std"] == pytest.approx([np.std(np.arange(101)), 2 * np.std(np.arange(101))])
    assert stats["count"] == [101]


def test_dataset_stats_equal_numpy_over_written_frames(write_dataset) -> None:
    root, episodes = write_dataset(lengths=(7, 5, 9))
    actions = np.concatenate([np.stack(episode["action"]) for episode in episodes]).astype(
        np.float64
    )
    stats = LeRobotDatasetReader(root).stats["action"]
    np.testing.assert_allclose(stats["mean"], actions.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["std"], actions.std(0), rtol=1e-6)
    np.testing.assert_allclose(stats["q01"], np.quantile(actions, 0.01, axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["q99"], np.quantile(actions, 0.99, axis=0), rtol=1e-6)
    np.testing.assert_array_equal(stats["min"], actions.min(0))
    assert stats["count"][0] == 21


@pytest.mark.parametrize("mode", list(NormMode))
def test_normalize_then_unnormalize_is_identity(mode: NormMode) -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(3, 2, size=(500, 7))
    normalizer = FeatureNormalizer.from_stats(
        {k: np.asarray(v) for k, v in feature_stats(values).items()}, mode
    )
    np.testing.assert_allclose(
        normalizer.unnormalize(normalizer.normalize(values)), values, atol=1e-12
    )
    tensor = torch.from_numpy(values.astype(np.float32))
    np.testing.assert_allclose(
        normalizer.normalize(tensor).numpy(), normalizer.normalize(values), rtol=1e-5, atol=1e-5
    )


def test_modes_map_their_reference_points() -> None:
    values = np.random.default_rng(1).uniform(-5, 10, size=(1000, 3))
    stats = {k: np.asarray(v) for k, v in feature_stats(values).items()}
    quantile = FeatureNormalizer.from_stats(stats, "quantile")
    np.testing.assert_allclose(quantile.normalize(stats["q01"]), -1.0)
    np.testing.assert_allclose(quantile.normalize(stats["q99"]), 1.0)
    min_max = FeatureNormalizer.from_stats(stats, "min_max")
    np.testing.assert_allclose(min_max.normalize(values).min(0), -1.0)
    np.testing.assert_allclose(min_max.normalize(values).max(0), 1.0)
    mean_std = FeatureNormalizer.from_stats(stats, "mean_std").normalize(values)
    np.testing.assert_allclose(mean_std.mean(0), 0.0, atol=1e-9)
    np.testing.assert_allclose(mean_std.std(0), 1.0)


@pytest.mark.parametrize("mode", ["mean_std", "quantile", "min_max"])
def test_constant_dimension_is_guarded(mode: str) -> None:
    values = np.ones((50, 2))
    values[:, 1] = np.linspace(0, 1, 50)
    stats = {k: np.asarray(v) for k, v in feature_stats(values).items()}
    normalizer = FeatureNormalizer.from_stats(stats, mode)
    out = normalizer.normalize(values + np.array([1e-3, 0.0]))  # sensor noise on the constant dim
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[:, 0], 1e-3, atol=1e-9)  # shifted, not blown up by 1/0


def test_normalizer_over_batch_and_missing_stats() -> None:
    stats = {
        "action": {
            k: np.asarray(v)
            for k, v in feature_stats(np.random.default_rng(2).normal(size=(100, 7))).items()
        }
    }
    normalizer = Normalizer(stats, {"action": "mean_std"})
    batch = {"action": torch.zeros(4, 10, 7), "task": ["x"] * 4}
    out = normalizer.normalize(batch)
    assert out["task"] is batch["task"] and out["action"].shape == (4, 10, 7)
    torch.testing.assert_close(
        normalizer.unnormalize(out)["action"], batch["action"], atol=1e-6, rtol=0
    )
    with pytest.raises(KeyError, match="observation.state"):
        Normalizer(stats, {"observation.state": "mean_std"})
    with pytest.raises(ValueError):
        Normalizer(stats, {"action": "zscore"})
