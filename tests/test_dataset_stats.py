"""Dataset statistics in LeRobot's format: an entry per camera, the index columns, the full
quantile set, and per-episode `stats/<feature>/<stat>` columns that rebuild stats.json after
episodes are deleted or split (what LeRobot's edit tools do)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import make_episode

from data.features import INDEX_FEATURES
from data.reader import LeRobotDatasetReader
from data.stats import QUANTILES, STAT_NAMES, aggregate_stats, feature_stats, image_stats
from data.writer import LeRobotDatasetWriter, rebuild_stats

CAMERAS = ("observation.images.agentview", "observation.images.wrist")
REPO = Path(__file__).resolve().parents[1]


def _pixels(frames: list[np.ndarray], channel: int) -> np.ndarray:
    return np.stack(frames)[..., channel].ravel().astype(np.float64) / 255.0


def test_image_stats_equal_a_recount_of_every_pixel() -> None:
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (4, 9, 11, 3), dtype=np.uint8)
    frames[..., 2] = frames[..., 2] // 7 + 20  # a narrow channel: quantiles between few levels
    stats = image_stats(frames)
    assert set(stats) == set(STAT_NAMES) and stats["count"] == [4]
    for channel in range(3):
        values = _pixels(list(frames), channel)
        expected = {
            "mean": values.mean(),
            "std": values.std(),
            "min": values.min(),
            "max": values.max(),
            **{name: np.quantile(values, q) for name, q in QUANTILES.items()},
        }
        for name, value in expected.items():
            assert np.asarray(stats[name]).shape == (3, 1, 1)
            assert stats[name][channel][0][0] == pytest.approx(value, abs=1e-12), name


def test_aggregate_is_exact_for_moments_and_weights_quantiles_by_count() -> None:
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(n, 3)) * (1 + i) + i for i, n in enumerate((5, 40, 11))]
    aggregated = aggregate_stats([feature_stats(part) for part in parts])
    whole = feature_stats(np.concatenate(parts))
    for name in ("mean", "std", "min", "max", "count"):
        np.testing.assert_allclose(aggregated[name], whole[name], rtol=1e-12, atol=1e-12)
    weights = np.array([5, 40, 11]) / 56
    for name in QUANTILES:
        expected = sum(
            w * np.asarray(feature_stats(p)[name]) for w, p in zip(weights, parts, strict=True)
        )
        np.testing.assert_allclose(aggregated[name], expected, rtol=1e-12)
    with pytest.raises(ValueError, match="lack"):
        aggregate_stats([{"mean": [0.0], "count": [1]}])


@pytest.mark.parametrize("video", [False, True], ids=["png", "video"])
def test_stats_json_has_every_camera_index_column_and_quantile(write_dataset, video) -> None:
    root, episodes = write_dataset(lengths=(6, 3, 8), video=video)
    stats = json.loads((root / "meta/stats.json").read_text())
    assert set(stats) >= {*CAMERAS, "observation.state", "action", *INDEX_FEATURES}
    for key, feature_stats_ in stats.items():
        assert set(feature_stats_) == set(STAT_NAMES), key
    reader = LeRobotDatasetReader(root)
    for key in ("observation.state", "action", *INDEX_FEATURES):
        assert stats[key]["count"] == [17]
    np.testing.assert_array_equal(stats["frame_index"]["max"], [7])
    np.testing.assert_array_equal(stats["episode_index"]["mean"], [(3 * 1 + 8 * 2) / 17])
    np.testing.assert_allclose(
        stats["action"]["q50"], np.median(reader.numeric_columns()["action"], axis=0)
    )
    for key in CAMERAS:
        # From the frames as written (video is lossy, so never from decoded video).
        for channel in range(3):
            values = np.concatenate([_pixels(episode[key], channel) for episode in episodes])
            assert stats[key]["mean"][channel][0][0] == pytest.approx(values.mean(), abs=1e-12)
            assert stats[key]["std"][channel][0][0] == pytest.approx(values.std(), abs=1e-12)
            assert stats[key]["max"][channel][0][0] == values.max()
        assert stats[key]["count"] == [17]
        assert 0.0 <= np.min(stats[key]["q01"]) <= np.max(stats[key]["q99"]) <= 1.0


def test_each_episode_row_holds_its_own_stats(write_dataset) -> None:
    root, episodes = write_dataset(lengths=(6, 3, 8))
    rows = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    for row, episode in zip(rows, episodes, strict=True):
        length = len(episode["action"])
        for key in ("observation.state", "action", "reasoning.gripper_px"):
            expected = feature_stats(np.stack(episode[key]))
            for name in STAT_NAMES:
                np.testing.assert_allclose(row[f"stats/{key}/{name}"], expected[name], rtol=1e-12)
        for key in CAMERAS:
            assert row[f"stats/{key}/mean"] == image_stats(np.stack(episode[key]))["mean"]
        assert row["stats/frame_index/max"] == [length - 1]
        assert row["stats/index/min"] == [row["dataset_from_index"]]
        assert not any(column.startswith("stats/reasoning.subtask") for column in row)


def test_deleting_episodes_rebuilds_stats_from_the_episode_rows(write_dataset) -> None:
    """What LeRobot's delete_episodes/split_dataset do: aggregate the kept episodes' rows."""
    root, episodes = write_dataset(lengths=(6, 3, 8, 5))
    reader = LeRobotDatasetReader(root)
    kept = [0, 2]
    rebuilt = {
        key: aggregate_stats([reader.episode_stats()[i][key] for i in kept])
        for key in ("action", *CAMERAS)
    }
    actions = np.concatenate([np.stack(episodes[i]["action"]) for i in kept])
    np.testing.assert_allclose(rebuilt["action"]["mean"], actions.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(rebuilt["action"]["std"], actions.std(axis=0), rtol=1e-5)
    assert rebuilt["action"]["count"] == [14]
    for key in CAMERAS:
        values = np.concatenate([_pixels(episodes[i][key], 0) for i in kept])
        assert rebuilt[key]["mean"][0][0][0] == pytest.approx(values.mean(), abs=1e-12)
        assert rebuilt[key]["min"][0][0][0] == values.min()


def test_stale_stats_json_is_recomputed_with_cameras(write_dataset, tmp_path: Path) -> None:
    root, _ = write_dataset(lengths=(4, 4))
    written = json.loads((root / "meta/stats.json").read_text())
    # An older writer's stats.json: numeric features only, without quantiles q10..q90.
    (root / "meta/stats.json").write_text(json.dumps({"action": written["action"]}))
    stats = LeRobotDatasetReader(root).stats
    for key in (*CAMERAS, "observation.state", "timestamp"):
        np.testing.assert_allclose(np.asarray(stats[key]["mean"]), written[key]["mean"])


def test_vla_data_stats_restores_what_an_older_writer_lacked(write_dataset) -> None:
    root, _ = write_dataset(lengths=(6, 3, 8))
    episodes_file = root / "meta/episodes/chunk-000/file-000.parquet"
    complete_rows = pq.read_table(episodes_file).to_pylist()
    complete_stats = json.loads((root / "meta/stats.json").read_text())
    # What the writer wrote before per-episode stats: no stats/ columns, numeric stats only.
    bare = pq.read_table(episodes_file)
    bare = bare.select([name for name in bare.column_names if not name.startswith("stats/")])
    pq.write_table(bare, episodes_file)
    (root / "meta/stats.json").write_text(json.dumps({"action": complete_stats["action"]}))
    assert CAMERAS[0] not in LeRobotDatasetReader(root).stats

    result = subprocess.run(
        [sys.executable, "-m", "data.cli", "stats", str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert pq.read_table(episodes_file).to_pylist() == complete_rows
    assert json.loads((root / "meta/stats.json").read_text()) == complete_stats


def test_resuming_an_older_dataset_keeps_the_new_episodes_stats(write_dataset) -> None:
    root, _ = write_dataset(lengths=(6, 3))
    episodes_file = root / "meta/episodes/chunk-000/file-000.parquet"
    bare = pq.read_table(episodes_file)
    pq.write_table(
        bare.select([name for name in bare.column_names if not name.startswith("stats/")]),
        episodes_file,
    )
    writer = LeRobotDatasetWriter(root)
    writer.add_episode(make_episode(4, seed=9), task="task 0")
    writer.finalize()
    rows = pq.read_table(episodes_file).to_pylist()
    assert [row["stats/action/count"] for row in rows] == [None, None, [4]]
    reader = LeRobotDatasetReader(root)
    assert CAMERAS[0] not in reader.stats  # not every episode has camera statistics
    assert reader.stats["action"]["count"][0] == 13  # numeric ones come from the columns
    rebuild_stats(root)
    assert LeRobotDatasetReader(root).stats[CAMERAS[0]]["count"][0] == 13
