"""Edit a dataset written by `vla-data generate` with LeRobot's own tools and check that the
statistics they rebuild are non-empty and right.

Runs in the lerobot 0.4.4 side venv (scripts/lerobot_interop/check.sh). LeRobot's
delete_episodes, split_dataset and merge_datasets rebuild meta/stats.json from the per-episode
`stats/<feature>/<stat>` columns of meta/episodes; before those columns existed they wrote `{}`.
Each result is loaded with `LeRobotDataset` and its stats are compared with a recount over the
frames it holds: state, action and every camera (pixels in [0, 1], per channel). Prints one line
per check and exits non-zero on the first wrong number.

    python check_edits.py DATASET WORKDIR
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from lerobot.datasets.dataset_tools import delete_episodes, merge_datasets, split_dataset
from lerobot.datasets.lerobot_dataset import LeRobotDataset

QUANTILES = ("q01", "q10", "q50", "q90", "q99")


def recount(dataset: LeRobotDataset, key: str) -> np.ndarray:
    """Every frame's values of `key` as (N, D): images as (N * H * W, 3) pixels in [0, 1]."""
    if key in dataset.meta.camera_keys:
        frames = [dataset[i][key].numpy() for i in range(len(dataset))]  # (3, H, W) in [0, 1]
        return np.concatenate([frame.reshape(3, -1).T for frame in frames]).astype(np.float64)
    column = dataset.hf_dataset.with_format("numpy")[key]
    return np.asarray(column, dtype=np.float64).reshape(len(dataset), -1)


def check(dataset: LeRobotDataset, label: str) -> None:
    stats = dataset.meta.stats
    if not stats:
        sys.exit(f"FAIL {label}: meta/stats.json is empty")
    keys = ["observation.state", "action", *dataset.meta.camera_keys]
    for key in keys:
        if key not in stats:
            sys.exit(f"FAIL {label}: no stats for {key!r} (has {sorted(stats)})")
        values = recount(dataset, key)
        found = {
            name: np.asarray(stats[key][name], dtype=np.float64).reshape(-1) for name in stats[key]
        }
        expected = {
            "mean": values.mean(0),
            "std": values.std(0),
            "min": values.min(0),
            "max": values.max(0),
        }
        for name, want in expected.items():
            # float32 columns and pixel sums: agreement to 1e-5 is exact for this purpose
            if not np.allclose(found[name], want, rtol=1e-5, atol=1e-6):
                sys.exit(f"FAIL {label}: {key} {name} {found[name]} != recount {want}")
        if int(found["count"][0]) != len(dataset):
            sys.exit(f"FAIL {label}: {key} count {found['count']} != {len(dataset)} frames")
        quantiles = np.stack([found[name] for name in QUANTILES])
        if not (np.diff(quantiles, axis=0) >= -1e-9).all():
            sys.exit(f"FAIL {label}: {key} quantiles are not ordered: {quantiles}")
    print(
        f"ok   {label}: {dataset.meta.total_episodes} episodes, {len(dataset)} frames, "
        f"stats of {len(keys)} features equal a recount"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("workdir", type=Path, help="where the edited copies go (replaced)")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    source = LeRobotDataset("vla/source", root=args.dataset)
    check(source, "as written by vla-data generate")
    episodes = source.meta.total_episodes

    deleted = delete_episodes(
        source,
        episode_indices=[0, episodes - 1],
        output_dir=args.workdir / "deleted",
        repo_id="vla/deleted",
    )
    check(deleted, "delete_episodes (first and last removed)")

    halves = split_dataset(
        source,
        splits={"train": list(range(episodes // 2)), "val": list(range(episodes // 2, episodes))},
        output_dir=args.workdir / "split",
    )
    for name, part in halves.items():
        check(part, f"split_dataset[{name}]")

    merged = merge_datasets(
        [halves["train"], halves["val"]],
        output_repo_id="vla/merged",
        output_dir=args.workdir / "merged",
    )
    check(merged, "merge_datasets (the two halves)")


if __name__ == "__main__":
    main()
