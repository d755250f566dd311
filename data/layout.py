"""Paths and atomic file writes of the LeRobotDataset v3 layout.

Every file the writer produces goes through `atomic_write_*`: written beside its target under a
temporary name, flushed to disk, then renamed over the target. A crash therefore leaves either the
old file or the new one, never half of one, which is what makes interrupted generation resumable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk directory, as LeRobot does
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
TEMP_SUFFIX = ".partial"


def _temp_path(path: Path) -> Path:
    return path.with_name(path.name + TEMP_SUFFIX)


def _replace_durably(temp: Path, path: Path) -> None:
    with open(temp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, path)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_path(path)
    temp.write_text(text)
    _replace_durably(temp, path)


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def atomic_write_parquet(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_path(path)
    pq.write_table(table, temp, compression="snappy")
    _replace_durably(temp, path)


def atomic_move(temp: Path, path: Path) -> None:
    """Publish a file that was written elsewhere (e.g. an encoded video) under its final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_durably(temp, path)


def remove_partial_files(root: Path) -> list[Path]:
    """Delete temporary files an interrupted writer left behind; returns what was removed."""
    removed = []
    for partial in root.rglob(f"*{TEMP_SUFFIX}"):
        partial.unlink()
        removed.append(partial)
    return removed


def chunk_and_file(file_number: int) -> tuple[int, int]:
    """The n-th file of a kind lives in chunk n // CHUNKS_SIZE as file n % CHUNKS_SIZE."""
    return divmod(file_number, CHUNKS_SIZE)
