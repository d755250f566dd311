"""Periodic evaluation during training: train.py's wiring rolls the policy out in MuJoCo every N
steps and logs success, per-task rates and a video."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

from data.video import decode_video
from vla.training.config import load_config
from vla.training.run import train

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def load_train_script():  # noqa: ANN201 - the train.py module
    spec = importlib.util.spec_from_file_location("train_script", REPO / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_logs_success_and_videos_every_n_steps(write_dataset, tmp_path: Path) -> None:
    root, _ = write_dataset(lengths=(20, 20))
    config = load_config(
        None,
        [
            f"data.path={root}",
            f"output_dir={tmp_path / 'runs'}",
            "data.batch_size=4",
            "data.num_workers=0",
            "trainer.max_steps=6",
            "trainer.log_every=1",
            "trainer.checkpoint_every=100",
            "trainer.ema_decay=null",
            "logging.wandb=offline",
            "model.overrides.num_inference_steps=2",
            "eval.every_n_steps=3",
            "eval.episodes_per_task=1",
            "eval.num_envs=1",
            "eval.videos_per_task=1",
        ],
    )
    script = load_train_script()
    with script.periodic_evaluation(config) as callbacks:
        train(config, callbacks=callbacks)
    (callback,) = callbacks
    assert [entry["step"] for entry in callback.history] == [3, 6]
    with open(config.run_dir / "logs" / "csv" / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("eval/success_rate")]
    assert [int(row["step"]) for row in rows] == [3, 6]
    assert all(0.0 <= float(row["eval/success_rate"]) <= 1.0 for row in rows)
    assert all(row.get("eval/task02_success_rate") for row in rows), "per-task rates are logged"
    for run in ("eval000", "eval001"):
        videos = sorted((config.run_dir / "eval_videos" / run).glob("*.mp4"))
        assert len(videos) == 3, "one filmed episode per quickstart task"
        frames = decode_video(videos[0])
        assert frames.shape[0] == 200  # an untrained policy runs to the limit
        # rendered at the training dataset's 32x32 (videos are drawn at 3x), not a fixed default
        assert frames.shape[2] == 32 * 3
    wandb_videos = list((config.run_dir / "logs" / "wandb").rglob("media/videos/**/*.mp4"))
    assert wandb_videos, "rollout videos are logged to wandb"
