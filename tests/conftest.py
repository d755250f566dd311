"""Shared fixtures: small datasets built from deterministic random frames."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from data.features import default_features  # noqa: E402
from data.reasoning import ObjectBox, Reasoning  # noqa: E402
from data.writer import LeRobotDatasetWriter  # noqa: E402

EpisodeColumns = dict[str, list]


def make_episode(
    length: int, seed: int, image_size: tuple[int, int] = (32, 32), reasoning: bool = True
) -> EpisodeColumns:
    """One episode of random but reproducible frames with the default vla features."""
    rng = np.random.default_rng(seed)
    height, width = image_size
    columns: EpisodeColumns = {
        "observation.images.agentview": list(
            rng.integers(0, 256, (length, height, width, 3), dtype=np.uint8)
        ),
        "observation.images.wrist": list(
            rng.integers(0, 256, (length, height, width, 3), dtype=np.uint8)
        ),
        "observation.state": list(rng.normal(size=(length, 8)).astype(np.float32)),
        "action": list(rng.uniform(-1, 1, size=(length, 7)).astype(np.float32)),
    }
    if reasoning:
        frames = [
            Reasoning(
                plan=("pick up the red cube", "place it in the bowl"),
                subtask="pick up the red cube" if step < length // 2 else "place it in the bowl",
                move=["move down", "close gripper", "move up left"][step % 3],
                gripper_px=tuple((int(x), int(y)) for x, y in rng.integers(0, width, (5, 2))),
                objects=(ObjectBox("red cube", (1, 2, 5, 6)), ObjectBox("bowl", (10, 12, 20, 22))),
            ).to_frame()
            for step in range(length)
        ]
        for key in frames[0]:
            columns[key] = [frame[key] for frame in frames]
    return columns


@pytest.fixture
def write_dataset(tmp_path: Path) -> Callable[..., tuple[Path, list[EpisodeColumns]]]:
    """Write episodes of the given lengths; returns the root and the episodes as written."""

    def write(
        lengths: tuple[int, ...] = (7, 5, 9),
        name: str = "dataset",
        video: bool = False,
        image_size: tuple[int, int] = (32, 32),
        data_file_size_mb: float = 64,
    ) -> tuple[Path, list[EpisodeColumns]]:
        root = tmp_path / name
        writer = LeRobotDatasetWriter(
            root,
            features=default_features(image_size=image_size, video=video),
            fps=20,
            data_file_size_mb=data_file_size_mb,
        )
        episodes = []
        for number, length in enumerate(lengths):
            episode = make_episode(length, seed=number, image_size=image_size)
            writer.add_episode(episode, task=f"task {number % 2}")
            episodes.append(episode)
        writer.finalize()
        return root, episodes

    return write


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests are skipped, with the reason printed in the summary, where CUDA is absent."""
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(
        reason="needs a CUDA device; none is visible (torch.cuda.is_available() is False)"
    )
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
