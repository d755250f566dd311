"""Training-sample throughput of `ActionChunkDataset` on this machine.

Builds a dataset of camera-like frames (2 cameras, 128x128, PNG in parquet; and the same as mp4),
then measures samples/s for: single-process `__getitem__`, a DataLoader with 2 workers, and, as
the reference the fast path is measured against, a naive loader that reads the sample's rows from
parquet per sample.

    .venv/bin/python benchmarks/loader_throughput.py [--episodes 40] [--length 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, rate  # noqa: E402

from data.features import default_features  # noqa: E402
from data.reader import LeRobotDatasetReader, decode_image  # noqa: E402
from data.reasoning import Reasoning  # noqa: E402
from data.schema import (  # noqa: E402
    ACTION_DIM,
    ACTION_KEY,
    DEFAULT_CAMERA_RESOLUTION,
    STATE_DIM,
    STATE_KEY,
    TASK_KEY,
    image_key,
)
from data.torch_dataset import ActionChunkDataset  # noqa: E402
from data.writer import LeRobotDatasetWriter  # noqa: E402

FRAME_SIZE = DEFAULT_CAMERA_RESOLUTION[0]  # square frames, the size default_features stores


def scene_frames(length: int, seed: int, size: int = FRAME_SIZE) -> np.ndarray:
    """A table-top-like picture: smooth background and a few moving coloured blocks."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    background = (90 + 40 * y / size)[..., None] * np.array([1.0, 0.9, 0.8])
    frames = np.repeat(background[None], length, axis=0)
    for _ in range(4):
        color = rng.integers(30, 255, 3)
        cx, cy = rng.uniform(20, size - 20, 2)
        vx, vy = rng.uniform(-0.5, 0.5, 2)
        for t in range(length):
            inside = (np.abs(x - cx - vx * t) < 8) & (np.abs(y - cy - vy * t) < 8)
            frames[t][inside] = color
    frames += rng.normal(0, 2, frames.shape)  # sensor noise, as rendered images have
    return np.clip(frames, 0, 255).astype(np.uint8)


def build(root: Path, episodes: int, length: int, video: bool) -> None:
    writer = LeRobotDatasetWriter(root, features=default_features(video=video), fps=20)
    reasoning = Reasoning(
        plan=("pick up the cube", "place it"), subtask="pick up the cube", move="move down"
    ).to_frame()
    for seed in range(episodes):
        rng = np.random.default_rng(seed)
        writer.add_episode(
            {
                image_key("agentview"): scene_frames(length, seed),
                image_key("wrist"): scene_frames(length, seed + 1000),
                STATE_KEY: rng.normal(size=(length, STATE_DIM)).astype(np.float32),
                ACTION_KEY: rng.uniform(-1, 1, (length, ACTION_DIM)).astype(np.float32),
                **{key: [value] * length for key, value in reasoning.items()},
            },
            task=f"task {seed % 4}",
        )
    writer.finalize()


def naive_sample(reader: LeRobotDatasetReader, row: int, horizon: int) -> dict[str, np.ndarray]:
    """What a loader without the fast path does: open parquet and filter rows for every sample."""
    table = pq.read_table(reader.episode_of_row(row).data_path)
    rows = table.filter(
        pc.and_(pc.greater_equal(table["index"], row), pc.less(table["index"], row + horizon))
    )
    return {
        ACTION_KEY: np.stack(rows[ACTION_KEY].to_pylist()),
        "agentview": decode_image(rows[image_key("agentview")][0]["bytes"].as_py()),
        "wrist": decode_image(rows[image_key("wrist")][0]["bytes"].as_py()),
    }


def naive_batch(
    reader: LeRobotDatasetReader, horizon: int, rng: np.random.Generator, count: int = 8
) -> int:
    for row in rng.integers(0, reader.num_frames, count):
        naive_sample(reader, int(row), horizon)
    return count


def measure(name: str, dataset: ActionChunkDataset, batch_size: int) -> dict[str, float]:
    """Samples/s of random single-sample access and of a 2-worker shuffled DataLoader."""
    rng = np.random.default_rng(0)

    def single_process(count: int = 256) -> int:
        for index in rng.integers(0, len(dataset), count):
            dataset[int(index)]
        return count

    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=2,
        persistent_workers=True,
        drop_last=True,
    )

    def with_workers() -> int:
        return sum(len(batch[TASK_KEY]) for batch in loader)

    return {
        f"{name}: 1 process": rate(single_process),
        f"{name}: DataLoader, 2 workers, batch {batch_size}": rate(with_workers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--horizon", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {machine_description()}")
    print(
        f"dataset: {args.episodes} episodes x {args.length} frames, 2 cameras {FRAME_SIZE}x{FRAME_SIZE}, horizon {args.horizon}"
    )
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for video in (False, True):
            root = Path(scratch) / ("video" if video else "png")
            start = time.perf_counter()
            build(root, args.episodes, args.length, video)
            storage = "mp4" if video else "png"
            print(f"[{storage}] wrote dataset in {time.perf_counter() - start:.1f} s")
            for frame_cache in [True] if video else [False, True]:
                name = f"{storage}, {'frame cache' if frame_cache else 'decode per sample'}"
                start = time.perf_counter()
                dataset = ActionChunkDataset(
                    root, action_horizon=args.horizon, frame_cache=frame_cache
                )
                print(
                    f"[{name}] opened dataset (incl. building the frame cache) in {time.perf_counter() - start:.1f} s"
                )
                results.update(measure(name, dataset, args.batch_size))
            if not video:
                results["png, naive per-sample parquet read: 1 process"] = rate(
                    partial(naive_batch, dataset.reader, args.horizon, np.random.default_rng(0))
                )
    print()
    for name, value in results.items():
        print(f"{name:<55} {value:8.0f} samples/s")
    naive = results["png, naive per-sample parquet read: 1 process"]
    for name in ("png, decode per sample", "png, frame cache"):
        print(
            f"{name} / naive per-sample read (1 process): {results[name + ': 1 process'] / naive:.1f}x"
        )


if __name__ == "__main__":
    main()
