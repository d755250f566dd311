"""Open and validate LeRobot datasets: the v3.0 layout we write, and v2.x (public LIBERO ports).

The reader turns either layout into one picture — features, fps, tasks, a list of `Episode`
records and one concatenated frame table — so everything downstream ignores the on-disk version.
Every problem is reported as a `DatasetError` naming the file and the key at fault.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from data import layout
from data.features import INDEX_FEATURES, Feature
from data.stats import aggregate_stats, compute_stats, episode_stats_from_row

SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
# Index columns every data file must hold; `timestamp` is optional (old v2 ports lack it).
REQUIRED_INDEX_COLUMNS = ("index", "episode_index", "frame_index", "task_index")
PANDAS_INDEX_PREFIX = "__index_level_"  # a pandas index saved along, not a frame column


class DatasetError(ValueError):
    """A dataset on disk is missing a file, a key, or holds values that contradict its metadata."""


@dataclass(frozen=True)
class VideoSegment:
    path: Path
    from_timestamp: float
    to_timestamp: float


@dataclass(frozen=True)
class Episode:
    index: int
    length: int
    tasks: tuple[str, ...]
    data_path: Path
    from_index: int  # global row index of the first frame
    to_index: int  # one past the last frame
    videos: dict[str, VideoSegment] = field(default_factory=dict)


class LeRobotDatasetReader:
    """Read-only view of a dataset directory; cheap checks on open, full checks in `validate()`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: no such dataset directory")
        info_path = self.info_path = self.root / layout.INFO_PATH
        self.info = _read_json(info_path)
        if not isinstance(self.info, dict):
            raise DatasetError(
                f"{info_path}: expected a JSON object of dataset metadata, "
                f"got {type(self.info).__name__}"
            )
        for key in (
            "codebase_version",
            "fps",
            "features",
            "total_episodes",
            "total_frames",
            "data_path",
        ):
            if key not in self.info:
                raise DatasetError(f"{info_path}: missing key {key!r}")
        self.version = self.info["codebase_version"]
        if self.version not in SUPPORTED_VERSIONS:
            raise DatasetError(
                f"{info_path}: codebase_version {self.version!r} is not supported "
                f"(expected one of {', '.join(SUPPORTED_VERSIONS)})"
            )
        self.fps = self._info_integer("fps", minimum=1, meaning="frames per second")
        self._total_episodes = self._info_integer("total_episodes", minimum=0)
        self._total_frames = self._info_integer("total_frames", minimum=0)
        self._chunks_size = (
            self._info_integer("chunks_size", minimum=1, meaning="files per chunk directory")
            if self.info.get("chunks_size") is not None
            else layout.CHUNKS_SIZE
        )
        self.features = self._parse_features(info_path)
        if self.version == "v3.0":
            self.tasks, self.episodes = self._load_v3_meta()
        else:
            self.tasks, self.episodes = self._load_v2_meta()
        self._check_episode_index_ranges()

    # ------------------------------------------------------------------ metadata
    def _info_integer(self, key: str, minimum: int, meaning: str = "") -> int:
        """info.json's `key` as an int, or a DatasetError that says what was expected."""
        value = self.info[key]
        number = int(value) if isinstance(value, float) and value.is_integer() else value
        if isinstance(number, bool) or not isinstance(number, int) or number < minimum:
            expected = {0: "a non-negative integer", 1: "a positive integer"}.get(
                minimum, f"an integer >= {minimum}"
            )
            raise DatasetError(
                f"{self.info_path}: {key} is {value!r}; expected {expected}"
                + (f" ({meaning})" if meaning else "")
            )
        return number

    def _path_from_template(self, key: str, **fields: Any) -> Path:
        """The file that info.json's path template `key` names for `fields`; it must lie inside
        the dataset root, so metadata cannot make the reader open files elsewhere.

        Checked on the normalized path ('..' folded), not by resolving symlinks: the Hugging
        Face hub cache keeps every file of a dataset as a symlink into a blobs directory outside
        the snapshot, and such datasets must still open."""
        template = self.info.get(key)
        placeholders = ", ".join(f"{{{name}}}" for name in fields)
        if not isinstance(template, str):
            raise DatasetError(
                f"{self.info_path}: {key} is {template!r}; expected a path template "
                f"(a string with the placeholders {placeholders})"
            )
        try:
            relative = template.format(**fields)
        except (KeyError, IndexError, ValueError, TypeError, AttributeError) as error:
            raise DatasetError(
                f"{self.info_path}: {key} is {template!r}; expected a path template with the "
                f"placeholders {placeholders} ({type(error).__name__}: {error})"
            ) from None
        normalized = os.path.normpath(relative)
        if os.path.isabs(normalized) or normalized.split(os.sep)[0] == os.pardir:
            raise DatasetError(
                f"{self.info_path}: {key} {template!r} gives {relative!r}, which is outside the "
                f"dataset root {self.root}; expected a path relative to the root, without '..'"
            )
        return self.root / normalized

    def _parse_features(self, info_path: Path) -> dict[str, Feature]:
        raw = self.info["features"]
        if not isinstance(raw, dict):
            raise DatasetError(f"{info_path}: 'features' must be an object")
        try:
            features = {
                key: Feature.from_json(key, spec, str(info_path)) for key, spec in raw.items()
            }
        except ValueError as error:
            raise DatasetError(str(error)) from None
        return {key: feature for key, feature in features.items() if key not in INDEX_FEATURES}

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        return self._total_frames

    @property
    def visual_keys(self) -> list[str]:
        return [key for key, feature in self.features.items() if feature.is_visual]

    @property
    def numeric_keys(self) -> list[str]:
        return [key for key, feature in self.features.items() if feature.is_numeric]

    def episodes_table(self) -> pa.Table:
        """The v3 episodes metadata rows of committed episodes."""
        return self._episodes_table

    def _load_v3_meta(self) -> tuple[list[str], list[Episode]]:
        total_episodes = self._total_episodes
        tasks_path = self.root / layout.TASKS_PATH
        tasks_table = _read_parquet(tasks_path)
        task_text_column = "task" if "task" in tasks_table.column_names else "__index_level_0__"
        for column in ("task_index", task_text_column):
            if column not in tasks_table.column_names:
                raise DatasetError(f"{tasks_path}: missing column {column!r}")
        order = np.argsort(tasks_table["task_index"].to_numpy())
        tasks = [tasks_table[task_text_column][int(i)].as_py() for i in order]

        episode_files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if total_episodes and not episode_files:
            raise DatasetError(f"{self.root / 'meta/episodes'}: no episode metadata files")
        tables = [_read_parquet(path) for path in episode_files]
        table = pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
        required = (
            "episode_index",
            "length",
            "data/chunk_index",
            "data/file_index",
            "dataset_from_index",
            "dataset_to_index",
            "tasks",
        )
        for column in required:
            if tables and column not in table.column_names:
                raise DatasetError(f"{episode_files[0]}: missing column {column!r}")
        if tables:
            # Rows past total_episodes were written by an interrupted writer and never committed.
            table = table.filter(pc.less(table["episode_index"], total_episodes))
            table = table.sort_by("episode_index")
        self._episodes_table = table
        if table.num_rows != total_episodes:
            raise DatasetError(
                f"{self.root / layout.INFO_PATH}: total_episodes is {total_episodes} but "
                f"meta/episodes lists {table.num_rows}"
            )
        video_keys = [key for key, feature in self.features.items() if feature.dtype == "video"]
        source = self.root / "meta" / "episodes"
        episodes = []
        for row in table.to_pylist():
            videos = {}
            for key in video_keys:
                prefix = f"videos/{key}/"
                for name in ("chunk_index", "file_index", "from_timestamp", "to_timestamp"):
                    if prefix + name not in row:
                        raise DatasetError(f"{episode_files[0]}: missing column {prefix + name!r}")
                videos[key] = VideoSegment(
                    path=self._path_from_template(
                        "video_path",
                        video_key=key,
                        chunk_index=_episode_integer(row, prefix + "chunk_index", source),
                        file_index=_episode_integer(row, prefix + "file_index", source),
                    ),
                    from_timestamp=_episode_seconds(row, prefix + "from_timestamp", source),
                    to_timestamp=_episode_seconds(row, prefix + "to_timestamp", source),
                )
            episodes.append(
                Episode(
                    index=_episode_integer(row, "episode_index", source),
                    length=_episode_integer(row, "length", source),
                    tasks=tuple(row["tasks"] or ()),
                    data_path=self._path_from_template(
                        "data_path",
                        chunk_index=_episode_integer(row, "data/chunk_index", source),
                        file_index=_episode_integer(row, "data/file_index", source),
                    ),
                    from_index=_episode_integer(row, "dataset_from_index", source),
                    to_index=_episode_integer(row, "dataset_to_index", source),
                    videos=videos,
                )
            )
        return tasks, episodes

    def _load_v2_meta(self) -> tuple[list[str], list[Episode]]:
        tasks_path = self.root / "meta" / "tasks.jsonl"
        task_rows = _read_jsonl(tasks_path, required=("task_index", "task"))
        tasks = [row["task"] for row in sorted(task_rows, key=lambda row: row["task_index"])]
        episodes_path = self.root / "meta" / "episodes.jsonl"
        rows = sorted(
            _read_jsonl(episodes_path, required=("episode_index", "length")),
            key=lambda row: row["episode_index"],
        )
        video_keys = [key for key, feature in self.features.items() if feature.dtype == "video"]
        episodes, start = [], 0
        for row in rows:
            index = _episode_integer(row, "episode_index", episodes_path)
            length = _episode_integer(row, "length", episodes_path)
            chunk = index // self._chunks_size
            videos = {
                key: VideoSegment(
                    self._path_from_template(
                        "video_path", episode_chunk=chunk, video_key=key, episode_index=index
                    ),
                    0.0,
                    length / self.fps,
                )
                for key in video_keys
            }
            episodes.append(
                Episode(
                    index=index,
                    length=length,
                    tasks=tuple(row.get("tasks", ())),
                    data_path=self._path_from_template(
                        "data_path", episode_chunk=chunk, episode_index=index
                    ),
                    from_index=start,
                    to_index=start + length,
                    videos=videos,
                )
            )
            start += length
        self._episodes_table = pa.Table.from_pylist(rows) if rows else pa.table({})
        if len(episodes) != self._total_episodes:
            raise DatasetError(
                f"{self.root / layout.INFO_PATH}: total_episodes is {self.info['total_episodes']} "
                f"but {episodes_path} lists {len(episodes)}"
            )
        return tasks, episodes

    def _check_episode_index_ranges(self) -> None:
        expected_start = 0
        for episode in self.episodes:
            if (
                episode.from_index != expected_start
                or episode.to_index - episode.from_index != episode.length
            ):
                raise DatasetError(
                    f"{self.root / 'meta/episodes'}: episode {episode.index} covers rows "
                    f"[{episode.from_index}, {episode.to_index}) with length {episode.length}; "
                    f"expected it to start at row {expected_start}"
                )
            expected_start = episode.to_index
        if expected_start != self.num_frames:
            raise DatasetError(
                f"{self.root / layout.INFO_PATH}: total_frames is {self.num_frames} but the episodes "
                f"add up to {expected_start} frames"
            )

    # ------------------------------------------------------------------ frames
    @cached_property
    def table(self) -> pa.Table:
        """All committed frames of every data file, in global index order (memory-mapped)."""
        paths = list(dict.fromkeys(episode.data_path for episode in self.episodes))
        tables = [self._read_data_file(path) for path in paths]
        if not tables:
            return pa.table({})
        table = pa.concat_tables(tables, promote_options="permissive")
        if table.num_rows != self.num_frames:
            raise DatasetError(
                f"{self.root}: data files hold {table.num_rows} committed frames but "
                f"{layout.INFO_PATH} says total_frames is {self.num_frames}"
            )
        index = table["index"].to_numpy()
        if not np.array_equal(index, np.arange(self.num_frames)):
            order = np.argsort(index, kind="stable")
            table = table.take(pa.array(order))
            if not np.array_equal(table["index"].to_numpy(), np.arange(self.num_frames)):
                raise DatasetError(
                    f"{self.root}: the 'index' column is not 0..{self.num_frames - 1}"
                )
        return table

    def _read_data_file(self, path: Path) -> pa.Table:
        """One data file's committed rows, after checking every column against info.json: each
        stored feature has its column, each column a feature (or is an index column), of the
        declared dtype and shape."""
        table = _read_parquet(path, memory_map=True)
        stored = [key for key, feature in self.features.items() if feature.dtype != "video"]
        declared_index = [key for key in INDEX_FEATURES if key in self.info["features"]]
        for key in dict.fromkeys([*stored, *REQUIRED_INDEX_COLUMNS, *declared_index]):
            if key not in table.column_names:
                where = (
                    f"declared in {layout.INFO_PATH}"
                    if key in self.info["features"]
                    else "every LeRobot data file has it"
                )
                raise DatasetError(f"{path}: missing column {key!r} ({where})")
        for key in table.column_names:
            arrow_type = table.schema.field(key).type
            if key in INDEX_FEATURES:
                _check_index_column_type(path, key, arrow_type)
            elif key.startswith(PANDAS_INDEX_PREFIX):
                continue
            elif key not in self.features:
                raise DatasetError(
                    f"{path}: column {key!r} is not declared in {self.info_path} features; "
                    "declare it there or drop the column"
                )
            elif self.features[key].dtype == "video":
                raise DatasetError(
                    f"{path}: column {key!r} is declared as a video feature in {self.info_path} "
                    "(frames in mp4 files), but the data file holds a column of that name"
                )
            else:
                _check_column_type(path, key, self.features[key], arrow_type)
        # Rows at or past total_frames were written by an interrupted writer and never committed.
        table = table.filter(pc.less(table["index"], self.num_frames))
        for key in stored:
            _check_column_values(path, key, self.features[key], table[key])
        return table

    def numeric_columns(self) -> dict[str, np.ndarray]:
        """Every numeric feature as a (N, *shape) array, read straight from parquet."""
        return {
            key: column_to_numpy(self.table[key], self.features[key]) for key in self.numeric_keys
        }

    @property
    def index_keys(self) -> list[str]:
        """LeRobot's index columns this dataset's frames carry (timestamp, frame_index, ...)."""
        return [key for key in INDEX_FEATURES if key in self.table.column_names]

    def index_columns(self) -> dict[str, np.ndarray]:
        """Each of `index_keys` as an (N,) array."""
        return {key: self.table[key].to_numpy() for key in self.index_keys}

    def task_of_frames(self) -> list[str]:
        """Task text per frame, resolved through task_index."""
        return [self.tasks[i] for i in self.table["task_index"].to_numpy()]

    def image(self, key: str, row: int) -> np.ndarray:
        """Decode one stored image (parquet image feature) as uint8 (H, W, 3)."""
        return decode_image(self.table[key][row]["bytes"].as_py())

    def episode_frames(self, key: str, episode: Episode, count: int | None = None) -> np.ndarray:
        """All frames of camera `key` in one episode, (T, H, W, 3) uint8, PNG or video; each is
        checked against the declared shape, and a bad one is named by episode and frame.

        `count` decodes only the first `count` PNG frames (video is decoded whole)."""
        feature = self.features[key]
        if feature.dtype == "video":
            return self.episode_video(key, episode)
        count = episode.length if count is None else min(count, episode.length)
        encoded = pc.struct_field(self.table[key].slice(episode.from_index, count), "bytes")
        frames = [
            self._decode_frame(key, episode, frame, data)
            for frame, data in enumerate(encoded.to_pylist())
        ]
        return np.stack(frames) if frames else np.empty((0, *feature.shape), np.uint8)

    def _decode_frame(
        self, key: str, episode: Episode, frame: int, encoded: bytes | None
    ) -> np.ndarray:
        try:
            image = decode_image(encoded)
        except Exception as error:  # noqa: BLE001 - PIL raises many types
            raise DatasetError(
                f"{episode.data_path}: cannot decode {key!r} of episode {episode.index} frame "
                f"{frame} (dataset row {episode.from_index + frame}): {error}"
            ) from error
        declared = self.features[key].shape
        if image.shape != declared:
            raise DatasetError(
                f"{episode.data_path}: {key!r} of episode {episode.index} frame {frame} is "
                f"{image.shape}, declared {declared} in {layout.INFO_PATH}"
            )
        return image

    def episode_video(self, key: str, episode: Episode) -> np.ndarray:
        """Decode one episode of a video feature as uint8 (T, H, W, 3)."""
        from data.video import decode_video

        segment = episode.videos[key]
        if not segment.path.exists():
            raise DatasetError(
                f"{segment.path}: video file for {key!r} episode {episode.index} is missing"
            )
        try:
            frames = decode_video(segment.path, segment.from_timestamp, segment.to_timestamp)
        except Exception as error:  # noqa: BLE001 - FFmpeg raises many types for a bad file
            raise DatasetError(
                f"{segment.path}: cannot decode video for {key!r}: {error}"
            ) from error
        if len(frames) != episode.length:
            raise DatasetError(
                f"{segment.path}: {key!r} has {len(frames)} frames for episode {episode.index}, "
                f"expected {episode.length}"
            )
        declared = self.features[key].shape
        if frames.shape[1:] != declared:
            raise DatasetError(
                f"{segment.path}: {key!r} frames of episode {episode.index} are "
                f"{frames.shape[1:]}, declared {declared} in {layout.INFO_PATH}"
            )
        return frames

    # ------------------------------------------------------------------ stats and checks
    @cached_property
    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """meta/stats.json when it is complete and current, else `compute_stats()`."""
        path = self.root / layout.STATS_PATH
        stats = _read_json(path) if path.exists() else {}
        counted = [*self.numeric_keys, *self.index_keys]
        current = all(
            isinstance(stats.get(key), dict)
            and stats[key].get("count", [None])[0] == self.num_frames
            for key in counted
        ) and all(key in stats for key in self._camera_stats)
        if not current:
            stats = self.compute_stats()
        return {
            key: {name: np.asarray(value, dtype=np.float64) for name, value in values.items()}
            for key, values in stats.items()
            if isinstance(values, dict)
        }

    def compute_stats(self) -> dict[str, dict[str, list]]:
        """Every feature's statistics (data/stats.py): numeric and index columns exactly over all
        frames; cameras aggregated from the per-episode statistics in meta/episodes, when every
        episode has them (images and video are never decoded here)."""
        stats = compute_stats({**self.numeric_columns(), **self.index_columns()})
        stats.update(self._camera_stats)
        return stats

    def episode_stats(self) -> list[dict[str, dict[str, object]]]:
        """Each committed episode's `stats/<feature>/<stat>` columns of meta/episodes, parsed."""
        return [episode_stats_from_row(row) for row in self._episodes_table.to_pylist()]

    @cached_property
    def _camera_stats(self) -> dict[str, dict[str, list]]:
        per_episode = self.episode_stats()
        aggregated = {}
        for key in self.visual_keys:
            parts = [stats.get(key) for stats in per_episode]
            if parts and all(parts):
                try:
                    aggregated[key] = aggregate_stats(parts)
                except ValueError as error:
                    raise DatasetError(
                        f"{self.root / 'meta/episodes'}: per-episode stats of {key!r}: {error}"
                    ) from None
        return aggregated

    def validate(
        self,
        decode: bool = True,
        full: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Check the dataset against its metadata: every data file readable, every column declared
        and typed and shaped as info.json says (and every stored feature present), values finite,
        episode/frame/task indices coherent.

        With `decode` (the quick check), also decodes the first image of every episode and every
        episode's video, which catches truncated or corrupted files. `full` decodes every image
        of every camera as well, so a bad frame in the middle of an episode is found and named
        by episode and frame; it implies `decode`. `progress(n)` is called after each episode of
        each camera with its frame count.
        """
        table = self.table
        task_index = table["task_index"].to_numpy()
        if len(task_index) and (task_index.min() < 0 or task_index.max() >= len(self.tasks)):
            raise DatasetError(
                f"{self.root}: task_index values span [{task_index.min()}, {task_index.max()}] "
                f"but {len(self.tasks)} tasks are listed"
            )
        episode_index = table["episode_index"].to_numpy()
        frame_index = table["frame_index"].to_numpy()
        for episode in self.episodes:
            rows = slice(episode.from_index, episode.to_index)
            if not (episode_index[rows] == episode.index).all():
                raise DatasetError(
                    f"{episode.data_path}: rows {episode.from_index}..{episode.to_index - 1} should "
                    f"all belong to episode {episode.index}"
                )
            if not np.array_equal(frame_index[rows], np.arange(episode.length)):
                raise DatasetError(
                    f"{episode.data_path}: frame_index of episode {episode.index} is not 0..{episode.length - 1}"
                )
        for key, values in self.numeric_columns().items():
            if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
                bad_row = int(np.argwhere(~np.isfinite(values.reshape(len(values), -1)))[0, 0])
                raise DatasetError(
                    f"{self.episode_of_row(bad_row).data_path}: {key!r} holds NaN/Inf at row {bad_row}"
                )
        if not (decode or full):
            return
        for episode in self.episodes:
            for key in self.visual_keys:
                self.episode_frames(key, episode, count=None if full else 1)
                if progress is not None:
                    progress(episode.length)

    def episode_of_row(self, row: int) -> Episode:
        starts = [episode.from_index for episode in self.episodes]
        return self.episodes[int(np.searchsorted(starts, row, side="right")) - 1]


# ---------------------------------------------------------------------- helpers
def column_to_numpy(column: pa.ChunkedArray, feature: Feature) -> np.ndarray:
    """A numeric column as (N, *feature.shape); accepts fixed-size and variable lists (v2 files)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if (
        pa.types.is_list(array.type)
        or pa.types.is_fixed_size_list(array.type)
        or pa.types.is_large_list(array.type)
    ):
        values = pc.list_flatten(array).to_numpy(zero_copy_only=False)
    else:
        values = array.to_numpy(zero_copy_only=False)
    return values.reshape(len(array), *feature.shape).astype(feature.dtype, copy=False)


def decode_image(encoded: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(encoded)) as image:
        return np.asarray(image.convert("RGB"))


def _is_list(arrow_type: pa.DataType) -> bool:
    return (
        pa.types.is_list(arrow_type)
        or pa.types.is_fixed_size_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
    )


def _check_index_column_type(path: Path, key: str, arrow_type: pa.DataType) -> None:
    floating = INDEX_FEATURES[key]["dtype"].startswith("float")
    ok = pa.types.is_floating(arrow_type) if floating else pa.types.is_integer(arrow_type)
    if not ok:
        expected = "floats" if floating else "integers"
        raise DatasetError(f"{path}: column {key!r} has type {arrow_type}, expected {expected}")


def _check_column_values(path: Path, key: str, feature: Feature, column: pa.ChunkedArray) -> None:
    """What the type cannot say: no nulls in numeric columns, and variable-length lists (v2
    files) all as long as the declared shape."""
    if not feature.is_numeric:
        return
    if column.null_count:
        raise DatasetError(
            f"{path}: column {key!r} has {column.null_count} null values; expected "
            f"{feature.dtype} {list(feature.shape)} in every row"
        )
    if not (_is_list(column.type) and not pa.types.is_fixed_size_list(column.type)):
        return
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    wrong = np.flatnonzero(lengths != feature.size)
    if len(wrong):
        row = int(wrong[0])
        raise DatasetError(
            f"{path}: column {key!r} holds lists of {lengths[row]} values (file row {row}), "
            f"expected {feature.size} for shape {list(feature.shape)} declared in {layout.INFO_PATH}"
        )


def _check_column_type(path: Path, key: str, feature: Feature, arrow_type: pa.DataType) -> None:
    if feature.dtype == "image":
        ok = pa.types.is_struct(arrow_type) and arrow_type.get_field_index("bytes") >= 0
        expected = "a struct with a 'bytes' field (encoded image)"
    elif feature.dtype == "string":
        ok = pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
        expected = "strings"
    elif (
        feature.size == 1
        and not pa.types.is_list(arrow_type)
        and not pa.types.is_fixed_size_list(arrow_type)
    ):
        ok = (
            pa.types.is_integer(arrow_type)
            or pa.types.is_floating(arrow_type)
            or pa.types.is_boolean(arrow_type)
        )
        expected = f"{feature.dtype} scalars"
    else:
        ok = _is_list(arrow_type) and (
            not pa.types.is_fixed_size_list(arrow_type) or arrow_type.list_size == feature.size
        )
        expected = f"lists of {feature.size} {feature.dtype}"
    if not ok:
        raise DatasetError(f"{path}: column {key!r} has type {arrow_type}, expected {expected}")
    if feature.is_numeric:
        values = arrow_type.value_type if _is_list(arrow_type) else arrow_type
        if values != pa.from_numpy_dtype(np.dtype(feature.dtype)):
            raise DatasetError(
                f"{path}: column {key!r} holds {values} values, but {layout.INFO_PATH} declares "
                f"{feature.dtype}"
            )


def _episode_integer(row: dict[str, Any], column: str, source: Path) -> int:
    """An index or count of an episode's metadata row; `source` names the file in errors."""
    value = row.get(column)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DatasetError(
            f"{source}: episode {row.get('episode_index')!r} has {column} {value!r}; "
            "expected a non-negative integer"
        )
    return value


def _episode_seconds(row: dict[str, Any], column: str, source: Path) -> float:
    value = row.get(column)
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise DatasetError(
            f"{source}: episode {row.get('episode_index')!r} has {column} {value!r}; "
            "expected a time in seconds"
        )
    return float(value)


def _read_json(path: Path) -> Any:
    if not path.exists():
        raise DatasetError(f"{path}: file is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: not valid JSON ({error})") from None


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    if not path.exists():
        raise DatasetError(f"{path}: file is missing")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path}:{number}: not valid JSON ({error})") from None
        missing = [key for key in required if key not in row]
        if missing:
            raise DatasetError(f"{path}:{number}: missing key(s) {missing}")
        rows.append(row)
    return rows


def _read_parquet(path: Path, memory_map: bool = False) -> pa.Table:
    if not path.exists():
        raise DatasetError(f"{path}: file is missing")
    try:
        return pq.read_table(path, memory_map=memory_map)
    except (pa.ArrowException, OSError) as error:
        raise DatasetError(f"{path}: unreadable parquet file ({error})") from None
