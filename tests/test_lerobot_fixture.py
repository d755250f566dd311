"""Datasets written by LeRobot's own writer read, summarize and train here, and ours match them.

The fixtures in tests/fixtures/lerobot/ were made with lerobot 0.4.4 in a side venv by
`bash scripts/lerobot_interop/check.sh fixture`: `vla-data generate --suite quickstart
--episodes-per-task 1 --image-size 64 64` (3 episodes, 321 frames), then every frame passed
through `LeRobotDataset.create` / `add_frame` / `save_episode` / `finalize`
(scripts/lerobot_interop/make_fixture.py), once with PNG images and once with video (LeRobot's
AV1, all episodes of a camera in one mp4). LeRobot computed their stats.json and per-episode stats.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data.features import default_features
from data.reader import LeRobotDatasetReader
from data.writer import LeRobotDatasetWriter

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "lerobot"
CAMERAS = ("observation.images.agentview", "observation.images.wrist")
VARIANTS = ("png", "video")


@pytest.mark.parametrize("variant", VARIANTS)
def test_reader_opens_and_validates_lerobot_written_datasets(variant: str) -> None:
    reader = LeRobotDatasetReader(FIXTURES / variant)
    reader.validate()  # decodes every episode's video / first image
    decoded: list[int] = []
    reader.validate(full=True, progress=decoded.append)  # every frame of every camera
    assert sum(decoded) == 321 * len(CAMERAS)
    assert (reader.version, reader.num_episodes, reader.num_frames) == ("v3.0", 3, 321)
    assert reader.features == default_features(image_size=(64, 64), video=variant == "video")
    assert reader.tasks == [
        "put the red cube on the plate",
        "put the blue cube on the plate",
        "put the red cube in the bowl",
    ]
    assert [episode.length for episode in reader.episodes] == [107, 99, 115]


def test_video_and_png_variants_hold_the_same_frames() -> None:
    png, video = (LeRobotDatasetReader(FIXTURES / variant) for variant in VARIANTS)
    for key, values in png.numeric_columns().items():
        np.testing.assert_array_equal(video.numeric_columns()[key], values)
    assert video.table["reasoning.move"].to_pylist() == png.table["reasoning.move"].to_pylist()
    for key in CAMERAS:
        for episode in video.episodes:
            # LeRobot packs all episodes into one mp4; each one is decoded by its timestamp window
            assert episode.videos[key].path == video.episodes[0].videos[key].path
            decoded = video.episode_video(key, episode).astype(np.int16)
            stored = np.stack(
                [png.image(key, row) for row in range(episode.from_index, episode.to_index)]
            ).astype(np.int16)
            error = np.abs(decoded - stored).mean()
            shifted = np.abs(decoded[1:] - stored[:-1]).mean()
            assert error < 5.0, f"{key} episode {episode.index}: AV1 error {error:.2f}/255"
            assert error < shifted, "each decoded frame is closest to its own PNG, not a neighbour"


def test_lerobot_stats_agree_with_a_recount() -> None:
    reader = LeRobotDatasetReader(FIXTURES / "png")
    written = json.loads((FIXTURES / "png" / "meta/stats.json").read_text())
    for key, values in reader.numeric_columns().items():
        values = values.reshape(len(values), -1).astype(np.float64)
        for name, expected in (("mean", values.mean(0)), ("min", values.min(0))):
            np.testing.assert_allclose(written[key][name], expected, rtol=1e-5, atol=1e-7)
        assert written[key]["count"] == [321]
    # reader.stats takes LeRobot's stats.json as current: it covers every feature and frame
    assert set(reader.stats) == set(written)
    per_episode = reader.episode_stats()
    assert [stats["action"]["count"] for stats in per_episode] == [[107], [99], [115]]
    # camera means: LeRobot samples frames per episode, so close to, not equal to, every pixel
    pixels = np.stack([reader.image(CAMERAS[0], row) for row in range(321)]) / 255.0
    np.testing.assert_allclose(
        np.ravel(written[CAMERAS[0]]["mean"]), pixels.reshape(-1, 3).mean(0), atol=0.01
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_vla_data_info_summarizes_lerobot_written_datasets(variant: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "data.cli", "info", str(FIXTURES / variant)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "episodes: 3   frames: 321" in result.stdout
    assert "put the red cube in the bowl" in result.stdout
    assert "valid (first image of every episode and every video decoded" in result.stdout
    # LeRobot's camera stats are shown per channel like ours
    assert "observation.images.wrist" in result.stdout.split("stats")[-1]


def test_our_files_match_lerobot_written_ones(tmp_path: Path) -> None:
    """Same features through both writers: same info.json, column types, schema metadata."""
    theirs = FIXTURES / "png"
    source = LeRobotDatasetReader(theirs)
    writer = LeRobotDatasetWriter(
        tmp_path / "ours", features=source.features, fps=source.fps, robot_type="panda"
    )
    for episode in source.episodes:
        rows = source.table.slice(episode.from_index, episode.length)
        columns = {key: rows[key].to_pylist() for key in source.features}
        for key in CAMERAS:
            columns[key] = [
                source.image(key, row) for row in range(episode.from_index, episode.to_index)
            ]
        for key, values in source.numeric_columns().items():
            columns[key] = values[episode.from_index : episode.to_index]
        writer.add_episode(columns, task=episode.tasks[0])
    writer.finalize()
    ours = tmp_path / "ours"

    info_ours, info_theirs = (
        json.loads((root / "meta/info.json").read_text()) for root in (ours, theirs)
    )
    assert info_ours == info_theirs

    data_ours, data_theirs = (
        pq.read_schema(root / "data/chunk-000/file-000.parquet") for root in (ours, theirs)
    )
    assert data_ours.names == data_theirs.names
    assert [field.type for field in data_ours] == [field.type for field in data_theirs]
    hf_ours, hf_theirs = (
        json.loads(schema.metadata[b"huggingface"]) for schema in (data_ours, data_theirs)
    )
    hf_theirs.pop("fingerprint")
    assert hf_ours == hf_theirs

    tasks_ours, tasks_theirs = (
        pq.read_schema(root / "meta/tasks.parquet") for root in (ours, theirs)
    )
    assert [f.type for f in tasks_ours] == [f.type for f in tasks_theirs]
    episodes_ours, episodes_theirs = (
        set(pq.read_schema(root / "meta/episodes/chunk-000/file-000.parquet").names)
        for root in (ours, theirs)
    )
    assert episodes_ours == episodes_theirs
    stats_ours, stats_theirs = (
        json.loads((root / "meta/stats.json").read_text()) for root in (ours, theirs)
    )
    assert {key: set(value) for key, value in stats_ours.items()} == {
        key: set(value) for key, value in stats_theirs.items()
    }


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_train_py_trains_on_lerobot_written_datasets(variant: str, tmp_path: Path) -> None:
    """The main job's config (frozen EfficientNet features, reasoning with dropout) on LeRobot's
    files: 60 steps, the action and reasoning losses fall, and the export acts."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURES / variant, data)  # training writes a feature cache beside the data
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--config",
            "configs/quickstart.yaml",
            f"data.path={data}",
            f"output_dir={tmp_path / 'runs'}",
            "name=lerobot",
            "trainer.max_steps=60",
            "trainer.log_every=5",
            "trainer.checkpoint_every=60",
            "data.batch_size=8",
            "data.num_workers=0",
            "optim.warmup_steps=5",
            "logging.wandb=offline",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(tmp_path / "runs" / "lerobot" / "logs" / "csv" / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/loss")]
    for name in ("train/loss", "train/reasoning_loss"):  # LeRobot's string columns are labels too
        values = [float(row[name]) for row in rows]
        start, end = np.mean(values[:3]), np.mean(values[-3:])
        assert end < start / 1.5, f"{name} {start:.3f} -> {end:.3f}; expected a 1.5x drop"

    from vla import VLAPolicy
    from vla.checkpoint import load_checkpoint

    policy = VLAPolicy.from_pretrained(tmp_path / "runs" / "lerobot" / "export")
    reader = LeRobotDatasetReader(data)
    observation = {
        "observation.state": reader.numeric_columns()["observation.state"][0],
        "task": reader.tasks[0],
    }
    for key in CAMERAS:
        observation[key] = (
            reader.image(key, 0)
            if variant == "png"
            else reader.episode_video(key, reader.episodes[0])[0]
        )
    out = policy.infer([observation])
    assert out["actions"].shape[::2] == (1, 7) and np.isfinite(out["actions"]).all()
    assert load_checkpoint(tmp_path / "runs" / "lerobot" / "export").reasoning_trained
