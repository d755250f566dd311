"""Rewrite a dataset made by `vla-data generate` with LeRobot's own writer: the test fixture of
the other interop direction (tests/fixtures/lerobot/, tests/test_lerobot_fixture.py).

Runs in a side venv with lerobot 0.4.4 (scripts/lerobot_interop/check.sh makes one), not in
ours: it reads the source with pyarrow and PIL only and writes through `LeRobotDataset.create`,
`add_frame`, `save_episode` and `finalize`, exactly as a LeRobot user records a robot. Every
feature is kept, reasoning strings and the int16 gripper trace included; LeRobot computes the
stats (sampled image frames, histogram quantiles) and encodes the video variant (AV1).

    python make_fixture.py SOURCE_DATASET OUT [--video]
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from PIL import Image

INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a PNG dataset written by vla-data generate")
    parser.add_argument("out", type=Path, help="where LeRobot writes the copy (must not exist)")
    parser.add_argument("--video", action="store_true", help="store the cameras as LeRobot video")
    args = parser.parse_args()

    info = json.loads((args.source / "meta/info.json").read_text())
    features = {
        key: {
            **spec,
            "dtype": "video" if args.video and spec["dtype"] == "image" else spec["dtype"],
        }
        for key, spec in info["features"].items()
        if key not in INDEX_COLUMNS
    }
    for spec in features.values():
        spec.pop("info", None)
        spec["shape"] = tuple(spec["shape"])  # LeRobot compares shapes as tuples
    tasks = pq.read_table(args.source / "meta/tasks.parquet").to_pydict()
    task_text = dict(zip(tasks["task_index"], tasks["__index_level_0__"], strict=True))
    frames = pa.concat_tables(
        pq.read_table(path) for path in sorted((args.source / "data").rglob("*.parquet"))
    ).sort_by("index")

    dataset = LeRobotDataset.create(
        repo_id="vla/quickstart-lerobot-written",
        fps=info["fps"],
        features=features,
        root=args.out,
        robot_type=info.get("robot_type"),
        use_videos=args.video,
    )
    episode_index = frames["episode_index"].to_numpy()
    for episode in np.unique(episode_index):
        rows = frames.filter(pa.compute.equal(frames["episode_index"], episode)).to_pylist()
        for row in rows:
            frame = {"task": task_text[row["task_index"]]}
            for key, spec in features.items():
                value = row[key]
                if spec["dtype"] in ("image", "video"):
                    value = np.asarray(Image.open(io.BytesIO(value["bytes"])).convert("RGB"))
                elif spec["dtype"] != "string":
                    value = np.asarray(value, dtype=spec["dtype"]).reshape(spec["shape"])
                frame[key] = value
            dataset.add_frame(frame)
        dataset.save_episode()
    dataset.finalize()
    print(f"{args.out}: {dataset.meta.total_episodes} episodes, {dataset.meta.total_frames} frames")


if __name__ == "__main__":
    main()
