"""A torch Dataset of training samples: observation (with optional history) + future action chunk.

Fast path: every numeric and text column is read once from parquet into numpy/arrow when the
dataset is built, and each camera is decoded once into an uncompressed frame cache on disk
(`<root>/.cache/`, memory-mapped by every worker), so `__getitem__` is array slicing. Video
datasets always use the cache (random access into mp4 costs a seek and a GOP decode per sample);
image datasets use it while it stays under AUTO_FRAME_CACHE_BYTES per camera, and otherwise decode
the PNG of each sample (~1 ms per 128x128 frame) — `frame_cache=` forces either way.

Images come out as stored and as an environment renders them, uint8 (H, W, 3): a collated batch
then has the layout of a batch of observations, so training and inference share one processor
pipeline from the first step (vla/processor.py).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from data.features import Feature, observation_spec
from data.reader import LeRobotDatasetReader, column_to_numpy, decode_image
from data.schema import (
    ACTION_IS_PAD_KEY,
    ACTION_KEY,
    GRIPPER_PX_KEY,
    LAGGED_PREFIX,
    OBSERVATION_IS_PAD_KEY,
    REASONING_TEXT_FIELDS,
    STATE_KEY,
    TASK_KEY,
    ObservationSpec,
    image_key,
)

# Decode images once into an on-disk frame cache when it stays below this size (per camera).
AUTO_FRAME_CACHE_BYTES = 4 * 2**30


class ActionChunkDataset(Dataset):
    """Samples of one frame each: images, state, task, reasoning labels, and an action chunk.

    Per sample (H = action_horizon, T = n_obs_steps):
      observation.images.<cam>  uint8 (h, w, 3), or (T, h, w, 3) when T > 1
      observation.state         float32 (8,), or (T, 8)
      observation_is_pad        bool (T,)  — history frames before the episode start (repeated)
      action                    float32 (H, 7): actions of this frame and the next H-1
      action_is_pad             bool (H,)  — chunk positions past the episode end (last action
                                repeated; the loss must ignore them)
      task                      str
      reasoning.*               str labels, reasoning.gripper_px int16 (10,)   (if present)
      lagged.reasoning.*        the same labels 1..reasoning_lag frames earlier (if > 0)
      episode_index, frame_index, index   int

    `episodes` restricts samples to those episodes (train/validation splits); `cameras` picks
    camera keys (default: all); `frame_cache` forces the decoded-frame cache on or off;
    `reasoning_lag` adds an earlier frame's labels (stale-chain training, vla/processor.py).
    """

    def __init__(
        self,
        dataset: LeRobotDatasetReader | str | Path,
        action_horizon: int,
        n_obs_steps: int = 1,
        episodes: Sequence[int] | None = None,
        cameras: Sequence[str] | None = None,
        include_reasoning: bool = True,
        frame_cache: bool | None = None,
        reasoning_lag: int = 0,
    ) -> None:
        if action_horizon < 1 or n_obs_steps < 1:
            raise ValueError(
                f"action_horizon and n_obs_steps must be >= 1, got {action_horizon} and {n_obs_steps}"
            )
        self.reader = (
            dataset if isinstance(dataset, LeRobotDatasetReader) else LeRobotDatasetReader(dataset)
        )
        self.action_horizon = action_horizon
        self.n_obs_steps = n_obs_steps
        if reasoning_lag < 0:
            raise ValueError(f"reasoning_lag must be >= 0, got {reasoning_lag}")
        self.reasoning_lag = reasoning_lag
        for key in (STATE_KEY, ACTION_KEY):
            if key not in self.reader.features:
                raise KeyError(
                    f"{self.reader.root}: dataset has no {key!r} feature (has {sorted(self.reader.features)})"
                )

        self.camera_keys = self._select_cameras(cameras)
        table = self.reader.table
        self.state = column_to_numpy(table[STATE_KEY], self.reader.features[STATE_KEY])
        self.action = column_to_numpy(table[ACTION_KEY], self.reader.features[ACTION_KEY])
        self.task_index = table["task_index"].to_numpy()
        self.episode_index = table["episode_index"].to_numpy()
        self.frame_index = table["frame_index"].to_numpy()
        # Episode bounds per row: chunks and histories never cross an episode boundary.
        self.episode_start = np.empty(self.reader.num_frames, dtype=np.int64)
        self.episode_end = np.empty(self.reader.num_frames, dtype=np.int64)
        for episode in self.reader.episodes:
            self.episode_start[episode.from_index : episode.to_index] = episode.from_index
            self.episode_end[episode.from_index : episode.to_index] = episode.to_index

        self.reasoning_text = {}
        self.gripper_trace = None
        if include_reasoning:
            self.reasoning_text = {
                key: table[key].combine_chunks()
                for key in REASONING_TEXT_FIELDS
                if key in table.column_names
            }
            if GRIPPER_PX_KEY in self.reader.features:
                self.gripper_trace = column_to_numpy(
                    table[GRIPPER_PX_KEY], self.reader.features[GRIPPER_PX_KEY]
                )

        self._encoded_images: dict[str, Any] = {}
        self._frame_cache_paths: dict[str, Path] = {}
        self._decoded_frames: dict[str, np.ndarray] = {}  # opened lazily in each worker process
        for key in self.camera_keys:
            if _use_frame_cache(self.reader, key, frame_cache):
                self._frame_cache_paths[key] = decoded_frame_cache(self.reader, key)
            else:
                self._encoded_images[key] = table[key].combine_chunks().field("bytes")

        selected = self.reader.episodes
        if episodes is not None:
            by_index = {episode.index: episode for episode in self.reader.episodes}
            unknown = sorted(set(episodes) - set(by_index))
            if unknown:
                raise KeyError(
                    f"{self.reader.root}: no episodes {unknown[:10]} (has 0..{self.reader.num_episodes - 1})"
                )
            selected = [by_index[index] for index in episodes]
        self.rows = (
            np.concatenate(
                [np.arange(episode.from_index, episode.to_index) for episode in selected]
            )
            if selected
            else np.zeros(0, dtype=np.int64)
        )

    def _select_cameras(self, cameras: Sequence[str] | None) -> list[str]:
        available = self.reader.visual_keys
        if cameras is None:
            return available
        keys = [image_key(camera) for camera in cameras]
        missing = [key for key in keys if key not in available]
        if missing:
            raise KeyError(
                f"{self.reader.root}: no camera(s) {missing}; the dataset has {available}"
            )
        return keys

    @property
    def observation_spec(self) -> ObservationSpec:
        """The selected cameras at their stored resolution and the state size: what a policy
        trained on this dataset must be given (saved into its checkpoint)."""
        return observation_spec(
            self.reader.features,
            self.camera_keys,
            source=str(self.reader.root / "meta" / "info.json"),
        )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int) -> dict[str, Any]:
        row = int(self.rows[item])
        start, end = int(self.episode_start[row]), int(self.episode_end[row])

        chunk_rows = np.arange(row, row + self.action_horizon)
        action_is_pad = chunk_rows >= end
        chunk_rows = np.minimum(chunk_rows, end - 1)
        history_rows = np.arange(row - self.n_obs_steps + 1, row + 1)
        observation_is_pad = history_rows < start
        history_rows = np.maximum(history_rows, start)

        sample: dict[str, Any] = {
            STATE_KEY: torch.from_numpy(self._squeeze_history(self.state[history_rows])),
            OBSERVATION_IS_PAD_KEY: torch.from_numpy(observation_is_pad),
            ACTION_KEY: torch.from_numpy(self.action[chunk_rows]),
            ACTION_IS_PAD_KEY: torch.from_numpy(action_is_pad),
            TASK_KEY: self.reader.tasks[self.task_index[row]],
            "episode_index": int(self.episode_index[row]),
            "frame_index": int(self.frame_index[row]),
            "index": row,
        }
        for key in self.camera_keys:
            frames = np.stack([self._frame(key, history_row) for history_row in history_rows])
            sample[key] = torch.from_numpy(self._squeeze_history(frames))  # (T, h, w, 3)
        self._add_reasoning(sample, row, "")
        if self.reasoning_lag:
            self._add_reasoning(sample, max(start, row - self._lag(row)), LAGGED_PREFIX)
        return sample

    def _add_reasoning(self, sample: dict[str, Any], row: int, prefix: str) -> None:
        for key, column in self.reasoning_text.items():
            sample[prefix + key] = column[row].as_py()
        if self.gripper_trace is not None:
            sample[prefix + GRIPPER_PX_KEY] = torch.from_numpy(self.gripper_trace[row].copy())

    def _lag(self, row: int) -> int:
        """1..reasoning_lag frames, fixed per row (a multiplicative hash: no rng to reseed on
        resume, and neighbouring frames get different lags)."""
        return 1 + (row * 2654435761 % 2**32) % self.reasoning_lag

    def _frame(self, key: str, row: int) -> np.ndarray:
        if key in self._encoded_images:
            return decode_image(self._encoded_images[key][row].as_py())
        if key not in self._decoded_frames:
            self._decoded_frames[key] = np.load(self._frame_cache_paths[key], mmap_mode="r")
        return np.asarray(self._decoded_frames[key][row])

    def __getstate__(self) -> dict[str, Any]:
        # Workers re-open the memory maps themselves instead of receiving pickled copies.
        return {**self.__dict__, "_decoded_frames": {}}

    def _squeeze_history(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array[0] if self.n_obs_steps == 1 else array)


def _use_frame_cache(reader: LeRobotDatasetReader, key: str, frame_cache: bool | None) -> bool:
    if reader.features[key].dtype == "video":
        return True  # random access into mp4 is too slow to do per sample
    if frame_cache is not None:
        return frame_cache
    decoded_bytes = reader.num_frames * reader.features[key].size
    return decoded_bytes <= AUTO_FRAME_CACHE_BYTES


def frame_cache_path(reader: LeRobotDatasetReader, key: str) -> Path:
    """Where `decoded_frame_cache` keeps camera `key`'s frames; nothing is decoded here.

    `<dataset>/.cache/` (or a temporary directory when the dataset is read-only), named after
    the dataset's commit state, so appending episodes makes a fresh cache. Other per-frame caches
    (the frozen encoder's features) take their names from it for the same reason.
    """
    info_stamp = (reader.root / "meta" / "info.json").stat().st_mtime_ns
    name = f"{key}-{reader.num_frames}-{info_stamp}.npy"
    cache_dir = reader.root / ".cache"
    try:
        cache_dir.mkdir(exist_ok=True)
    except OSError:
        digest = hashlib.sha1(str(reader.root.resolve()).encode()).hexdigest()[:16]
        cache_dir = Path(tempfile.gettempdir()) / "vla-frame-cache" / digest
        cache_dir.mkdir(parents=True, exist_ok=True)
    return cache_dir / name


def decoded_frame_cache(reader: LeRobotDatasetReader, key: str) -> Path:
    """A .npy file of all frames of one camera, (N, H, W, 3) uint8, decoded once (at
    `frame_cache_path`): training on live images reads frames from it, not from PNG or video."""
    feature: Feature = reader.features[key]
    path = frame_cache_path(reader, key)
    cache_dir = path.parent
    if not path.exists():
        for stale in cache_dir.glob(f"{key}-*.npy"):
            if stale != path:
                stale.unlink(missing_ok=True)
        # unique per process: DDP ranks building the same cache at once must not share a file
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        frames = np.lib.format.open_memmap(
            partial, mode="w+", dtype=np.uint8, shape=(reader.num_frames, *feature.shape)
        )
        for episode in reader.episodes:
            frames[episode.from_index : episode.to_index] = reader.episode_frames(key, episode)
        frames.flush()
        del frames
        partial.rename(path)
    return path
