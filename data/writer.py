"""Append episodes to a LeRobotDataset-v3 directory, crash-safely and resumably.

Commit protocol (one episode):
  1. its frames are appended to the current data file (the file is rewritten to a temporary name,
     then renamed over the old one; rows of any earlier, uncommitted attempt are dropped first),
  2. its videos, if any, are encoded to their own mp4 files,
  3. its row is appended to the episodes metadata file and the task list is updated,
  4. `meta/info.json` is rewritten with the new totals — this rename is the commit point.
Readers only see episodes below `info.json`'s `total_episodes` and rows below `total_frames`, so a
crash at any step leaves the dataset as it was after the last committed episode. Reopening the
directory with `LeRobotDatasetWriter` resumes from there.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from data import layout
from data.features import INDEX_FEATURES, Feature, huggingface_metadata
from data.schema import TASK_KEY
from data.stats import EPISODE_STATS_PREFIX, episode_stats, episode_stats_columns
from data.video import encode_video

log = logging.getLogger(__name__)

# LeRobot's defaults, so its edit tools split and append our files as they would their own; we
# write one mp4 per episode and camera, so the video size is only recorded, never reached.
DEFAULT_DATA_FILE_SIZE_MB = 100
VIDEO_FILE_SIZE_MB = 200


class LeRobotDatasetWriter:
    """Writes episodes of frames into `root`; reopening an existing `root` resumes it.

    Typical use::

        writer = LeRobotDatasetWriter(root, features=default_features(), fps=20)
        for frame in episode:
            writer.add_frame(frame)          # {"observation.images.agentview": uint8 HxWx3, ...}
        writer.save_episode(task="put the red cube in the bowl")
        writer.finalize()                     # writes meta/stats.json

    Each episode's statistics (every numeric feature, every camera per channel, the index
    columns) are computed from its frames as they pass through and stored in its meta/episodes
    row, so stats.json can be rebuilt without decoding an image, by us or by LeRobot's tools.
    """

    def __init__(
        self,
        root: str | Path,
        features: Mapping[str, Feature] | None = None,
        fps: int = 20,
        robot_type: str = "panda",
        data_file_size_mb: float = DEFAULT_DATA_FILE_SIZE_MB,
    ) -> None:
        self.root = Path(root)
        self._frames: list[Mapping[str, Any]] = []
        if (self.root / layout.INFO_PATH).exists():
            self._resume(features, fps)
        else:
            if features is None:
                raise ValueError(f"{self.root} holds no dataset yet: pass `features` to create one")
            self._create(dict(features), fps, robot_type, data_file_size_mb)

    # ------------------------------------------------------------------ set-up
    def _create(
        self, features: dict[str, Feature], fps: int, robot_type: str, data_file_size_mb: float
    ) -> None:
        for reserved in INDEX_FEATURES:
            if reserved in features:
                raise ValueError(f"feature {reserved!r} is reserved: the writer fills it itself")
        self.features = features
        self.fps = fps
        self.info: dict[str, Any] = {
            "codebase_version": layout.CODEBASE_VERSION,
            "robot_type": robot_type,
            "total_episodes": 0,
            "total_frames": 0,
            "total_tasks": 0,
            "chunks_size": layout.CHUNKS_SIZE,
            "data_files_size_in_mb": data_file_size_mb,
            "video_files_size_in_mb": VIDEO_FILE_SIZE_MB,
            "fps": fps,
            "splits": {},
            "data_path": layout.DATA_PATH,
            "video_path": layout.VIDEO_PATH if self._video_keys() else None,
            "features": self._features_json(),
        }
        self.tasks: list[str] = []
        self._data_file_number = 0
        self._episodes_rows: list[dict[str, Any]] = []
        self.root.mkdir(parents=True, exist_ok=True)
        layout.atomic_write_json(self.root / layout.INFO_PATH, self.info)

    def _resume(self, features: Mapping[str, Feature] | None, fps: int) -> None:
        # Imported here: the reader imports this package's stats, and resuming is its job anyway.
        from data.reader import LeRobotDatasetReader

        layout.remove_partial_files(self.root)
        reader = LeRobotDatasetReader(self.root)
        if reader.version != layout.CODEBASE_VERSION:
            raise ValueError(f"{self.root}: can only append to {layout.CODEBASE_VERSION} datasets")
        if features is not None and dict(features) != reader.features:
            raise ValueError(
                f"{self.root} already holds a dataset with other features: "
                f"{sorted(reader.features)} vs requested {sorted(features)}"
            )
        if fps != reader.fps:
            raise ValueError(f"{self.root} was written at {reader.fps} fps, not {fps}")
        self.features = reader.features
        self.fps = reader.fps
        self.info = reader.info
        self.tasks = list(reader.tasks)
        self._episodes_rows = reader.episodes_table().to_pylist()
        if self._episodes_rows and not any(
            key.startswith(EPISODE_STATS_PREFIX) for key in self._episodes_rows[0]
        ):
            log.warning(
                "%s was written before the writer kept per-episode statistics: new episodes get "
                "them, earlier ones do not; `vla-data stats %s` adds them (LeRobot's edit tools "
                "and camera statistics need them)",
                self.root,
                self.root,
            )
        last = self._episodes_rows[-1] if self._episodes_rows else None
        self._data_file_number = (
            last["data/chunk_index"] * layout.CHUNKS_SIZE + last["data/file_index"] if last else 0
        )

    def _video_keys(self) -> list[str]:
        return [key for key, feature in self.features.items() if feature.dtype == "video"]

    def _features_json(self) -> dict[str, Any]:
        described = {key: feature.to_json() for key, feature in self.features.items()}
        for key in self._video_keys():
            height, width, _ = self.features[key].shape
            described[key]["info"] = {
                "video.fps": self.fps,
                "video.height": height,
                "video.width": width,
                "video.channels": 3,
                "video.pix_fmt": "yuv420p",
            }
        described.update(INDEX_FEATURES)
        return described

    # ------------------------------------------------------------------ public API
    @property
    def num_episodes(self) -> int:
        return int(self.info["total_episodes"])

    @property
    def num_frames(self) -> int:
        return int(self.info["total_frames"])

    def add_frame(self, frame: Mapping[str, Any]) -> None:
        """Buffer one frame of the episode being recorded (nothing touches disk until saved)."""
        self._frames.append(frame)

    def discard_episode(self) -> None:
        """Drop the buffered frames, e.g. when a scripted demonstration failed."""
        self._frames = []

    def save_episode(self, task: str) -> int:
        """Commit the buffered frames as one episode; returns its episode index."""
        if not self._frames:
            raise ValueError("save_episode() called with no frames: call add_frame() first")
        columns = {key: [frame[key] for frame in self._frames] for key in self._frames[0]}
        self._frames = []
        return self.add_episode(columns, task)

    def add_episode(self, columns: Mapping[str, Sequence[Any] | np.ndarray], task: str) -> int:
        """Commit one episode given per-feature sequences of equal length; returns its index."""
        if not task or not isinstance(task, str):
            raise ValueError(f"an episode needs a non-empty task string, got {task!r}")
        episode = self._validated_columns(columns)
        length = len(next(iter(episode.values())))
        episode_index = self.num_episodes
        start = self.num_frames
        task_index = self._task_index(task)

        index_columns = self._index_columns(episode_index, start, length, task_index)
        self._append_frames(episode, index_columns)
        video_columns = self._write_videos(episode, episode_index)
        data_chunk, data_file = layout.chunk_and_file(self._data_file_number)
        row: dict[str, Any] = {
            "episode_index": episode_index,
            "tasks": [task],
            "length": length,
            "data/chunk_index": data_chunk,
            "data/file_index": data_file,
            "dataset_from_index": start,
            "dataset_to_index": start + length,
            **video_columns,
            "meta/episodes/chunk_index": 0,
            "meta/episodes/file_index": 0,
            **episode_stats_columns(episode_stats(self.features, episode, index_columns)),
        }
        self._episodes_rows.append(row)
        layout.atomic_write_parquet(
            self.root / layout.EPISODES_PATH.format(chunk_index=0, file_index=0),
            _rows_table(self._episodes_rows),
        )
        layout.atomic_write_parquet(self.root / layout.TASKS_PATH, self._tasks_table())

        self.info.update(
            total_episodes=episode_index + 1,
            total_frames=start + length,
            total_tasks=len(self.tasks),
            splits={"train": f"0:{episode_index + 1}"},
        )
        layout.atomic_write_json(self.root / layout.INFO_PATH, self.info)  # the commit point
        return episode_index

    def finalize(self) -> dict[str, dict[str, list]]:
        """Write `meta/stats.json` (`LeRobotDatasetReader.compute_stats`); returns the stats.

        Safe to call repeatedly (e.g. after resuming and appending more episodes).
        """
        from data.reader import LeRobotDatasetReader

        stats = LeRobotDatasetReader(self.root).compute_stats()
        layout.atomic_write_json(self.root / layout.STATS_PATH, stats)
        return stats

    # ------------------------------------------------------------------ internals
    def _validated_columns(self, columns: Mapping[str, Any]) -> dict[str, Any]:
        missing = sorted(set(self.features) - set(columns))
        unknown = sorted(set(columns) - set(self.features) - {TASK_KEY})
        if missing or unknown:
            raise ValueError(
                f"episode keys do not match the dataset features: missing {missing}, unknown {unknown}"
            )
        lengths = {key: len(columns[key]) for key in self.features}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"features of one episode have different lengths: {lengths}")
        if next(iter(lengths.values())) == 0:
            raise ValueError("an episode needs at least one frame")
        validated: dict[str, Any] = {}
        for key, feature in self.features.items():
            if feature.dtype == "string":
                values = [str(value) for value in columns[key]]
                validated[key] = values
                continue
            array = np.asarray(columns[key])
            expected_shape = (len(array), *feature.shape)
            if feature.is_numeric and feature.shape == (1,) and array.ndim == 1:
                array = array[:, None]
            if array.shape != expected_shape:
                raise ValueError(
                    f"feature {key!r}: expected frames of shape {feature.shape}, "
                    f"got an episode array of shape {array.shape[1:]}"
                )
            if feature.is_visual:
                if array.dtype != np.uint8:
                    raise ValueError(f"feature {key!r}: images must be uint8, got {array.dtype}")
            else:
                if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
                    raise ValueError(f"feature {key!r}: values contain NaN or Inf")
                array = array.astype(feature.dtype, copy=False)
            validated[key] = array
        return validated

    def _task_index(self, task: str) -> int:
        if task not in self.tasks:
            self.tasks.append(task)
        return self.tasks.index(task)

    def _tasks_table(self) -> pa.Table:
        # LeRobot v3 keeps the task text as the (pandas) index and `task_index` as the column.
        table = pa.table({"task_index": pa.array(range(len(self.tasks)), pa.int64())})
        table = table.append_column("__index_level_0__", pa.array(self.tasks, pa.large_string()))
        pandas_meta = {
            "index_columns": ["__index_level_0__"],
            "column_indexes": [],
            "columns": [
                {
                    "name": "task_index",
                    "field_name": "task_index",
                    "pandas_type": "int64",
                    "numpy_type": "int64",
                    "metadata": None,
                },
                {
                    "name": "task",
                    "field_name": "__index_level_0__",
                    "pandas_type": "unicode",
                    "numpy_type": "object",
                    "metadata": None,
                },
            ],
        }
        return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})

    def _index_columns(
        self, episode_index: int, start: int, length: int, task_index: int
    ) -> dict[str, np.ndarray]:
        """LeRobot's per-frame index columns of one episode, each (length,)."""
        frame_index = np.arange(length, dtype=np.int64)
        return {
            "timestamp": (frame_index / self.fps).astype(np.float32),
            "frame_index": frame_index,
            "episode_index": np.full(length, episode_index, dtype=np.int64),
            "index": frame_index + start,
            "task_index": np.full(length, task_index, dtype=np.int64),
        }

    def _frames_table(
        self, episode: dict[str, Any], index_columns: dict[str, np.ndarray]
    ) -> pa.Table:
        length = len(index_columns["index"])
        arrays: dict[str, pa.Array] = {}
        for key, feature in self.features.items():
            if feature.dtype == "video":
                continue
            if feature.dtype == "image":
                arrays[key] = pa.array(
                    [{"bytes": _encode_png(image), "path": None} for image in episode[key]],
                    feature.arrow_type(),
                )
            elif feature.dtype == "string":
                arrays[key] = pa.array(episode[key], pa.string())
            elif feature.size == 1:
                arrays[key] = pa.array(episode[key].reshape(length))
            else:
                flat = pa.array(episode[key].reshape(-1))
                arrays[key] = pa.FixedSizeListArray.from_arrays(flat, feature.size)
        arrays.update({key: pa.array(values) for key, values in index_columns.items()})
        return pa.table(arrays).replace_schema_metadata(huggingface_metadata(self.features))

    def _append_frames(self, episode: dict[str, Any], index_columns: dict[str, np.ndarray]) -> None:
        start = int(index_columns["index"][0])
        new_rows = self._frames_table(episode, index_columns)
        path = self._data_path(self._data_file_number)
        if path.exists() and path.stat().st_size >= self.info["data_files_size_in_mb"] * 2**20:
            self._data_file_number += 1
            path = self._data_path(self._data_file_number)
        if path.exists():
            existing = pq.read_table(path)
            # Rows at or past the committed total belong to an attempt that crashed before commit.
            committed = existing.filter(pa.compute.less(existing["index"], start))
            new_rows = pa.concat_tables([committed.cast(new_rows.schema), new_rows])
        layout.atomic_write_parquet(path, new_rows)

    def _data_path(self, file_number: int) -> Path:
        chunk_index, file_index = layout.chunk_and_file(file_number)
        return self.root / layout.DATA_PATH.format(chunk_index=chunk_index, file_index=file_index)

    def _write_videos(self, episode: dict[str, Any], episode_index: int) -> dict[str, Any]:
        """One mp4 per episode and camera (v3 allows several episodes per file; one keeps appends
        cheap and never re-encodes). Returns the episode-metadata columns that locate them."""
        columns: dict[str, Any] = {}
        chunk_index, file_index = layout.chunk_and_file(episode_index)
        for key in self._video_keys():
            path = self.root / layout.VIDEO_PATH.format(
                video_key=key, chunk_index=chunk_index, file_index=file_index
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                dir=path.parent, suffix=".mp4" + layout.TEMP_SUFFIX, delete=False
            ) as handle:
                temp = Path(handle.name)
            encode_video(episode[key], temp, fps=self.fps)
            layout.atomic_move(temp, path)
            columns[f"videos/{key}/chunk_index"] = chunk_index
            columns[f"videos/{key}/file_index"] = file_index
            columns[f"videos/{key}/from_timestamp"] = 0.0
            columns[f"videos/{key}/to_timestamp"] = len(episode[key]) / self.fps
        return columns


def _rows_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows with the union of their keys as columns (`Table.from_pylist` keeps only the first
    row's: a resumed older dataset would silently drop the new rows' stats columns)."""
    columns = dict.fromkeys(key for row in rows for key in row)
    return pa.table({key: [row.get(key) for row in rows] for key in columns})


def _encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # compress_level 1: ~3x faster to write than the default, and decode speed is the same.
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def rebuild_stats(root: str | Path, progress: Callable[[int], None] | None = None) -> dict:
    """Recompute every episode's `stats/...` columns and meta/stats.json of the dataset at `root`.

    For datasets written before the writer kept per-episode statistics (or edited by a tool that
    dropped them): without those, LeRobot's edit tools write an empty stats.json and its training
    lacks camera statistics. Decodes every frame once (video statistics then come from decoded,
    lossy frames). Each episodes file is rewritten atomically; `progress(n)` is called per episode.
    """
    from data.reader import LeRobotDatasetReader

    reader = LeRobotDatasetReader(root)
    by_index = {episode.index: episode for episode in reader.episodes}
    index_columns = reader.index_columns()
    numeric_columns = reader.numeric_columns()
    for path in sorted((reader.root / "meta" / "episodes").glob("chunk-*/file-*.parquet")):
        rows = pq.read_table(path).to_pylist()
        for row in rows:
            episode = by_index.get(row["episode_index"])
            if episode is None:  # written by an interrupted writer, never committed
                continue
            span = slice(episode.from_index, episode.to_index)
            columns: dict[str, Any] = {}
            for key, feature in reader.features.items():
                if feature.is_visual:
                    columns[key] = reader.episode_frames(key, episode)
                elif feature.is_numeric:
                    columns[key] = numeric_columns[key][span]
            indices = {key: values[span] for key, values in index_columns.items()}
            row.update(episode_stats_columns(episode_stats(reader.features, columns, indices)))
            if progress is not None:
                progress(1)
        layout.atomic_write_parquet(path, _rows_table(rows))
    stats = LeRobotDatasetReader(root).compute_stats()
    layout.atomic_write_json(reader.root / layout.STATS_PATH, stats)
    return stats
