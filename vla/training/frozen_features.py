"""Per-frame features of a frozen image encoder, computed once per dataset and cached on disk.

Why: with a pretrained encoder frozen (`optim.vision_lr_scale: 0`), every training step would
run the same convnet over the same frames again: 3000 steps of batch 32 with two cameras encode
~190k images, the dataset holds ~20k. Encoding each frame once and looking the features up by
the sample's dataset row (`index`) makes a step as cheap as the decoder and expert alone, and
the data loader then skips image decoding too.

Exactness: frames go through the processor's own `PrepareImages` step and the tower's `encode`
in eval mode, so a looked-up feature is what inference computes live from the same frame, up to
float16 storage (relative error < 1e-3; halves the memory: 20k frames x 2 cameras x 16 tokens x
1280 channels is 0.8 GB). Random-shift augmentation cannot apply to precomputed features.

The cache lives beside the decoded-frame cache in `<dataset>/.cache/` and is named by a digest
of the encoder's weights, its input size, the camera and the dataset's commit state, so a
different encoder or an appended dataset never reads stale features; it is written atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from data.reader import LeRobotDatasetReader
from data.schema import STATE_KEY, ObservationSpec
from data.torch_dataset import frame_cache_path
from vla.processor import PrepareImages, StepContext, image_features_key

STORAGE_DTYPE = torch.float16


class FrozenImageFeatures:
    """camera -> (num_frames, N, C) encoder tokens of every dataset frame, looked up by row."""

    def __init__(self, tables: Mapping[str, torch.Tensor]) -> None:
        if not tables:
            raise ValueError("no cameras: frozen features need at least one table")
        self.tables = dict(tables)

    def attach(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch with each camera's features for its rows (`batch["index"]`), float32."""
        if "index" not in batch:
            raise KeyError(
                f"frozen features are looked up by the batch's 'index'; it has {sorted(batch)}"
            )
        rows = torch.as_tensor(batch["index"]).long().cpu()  # (B,)
        device = batch[STATE_KEY].device if STATE_KEY in batch else "cpu"
        out = dict(batch)
        for camera, table in self.tables.items():
            out[image_features_key(camera)] = table[rows].to(device, torch.float32)  # (B, N, C)
        return out

    @classmethod
    def for_dataset(
        cls,
        encoder: nn.Module,
        reader: LeRobotDatasetReader,
        spec: ObservationSpec,
        image_size: int,
        *,
        batch_size: int = 64,
        progress: bool = True,
    ) -> FrozenImageFeatures:
        """Encode every frame of every camera in `spec` (or read the cache), in eval mode.

        `encoder` is a `TimmVisionTower` (its `encode`: (B, 3, S, S) in [-1, 1] -> (B, N, C)).
        """
        weights = _weights_digest(encoder)
        tables = {}
        for camera in spec.cameras:
            path = _cache_path(reader, camera.key, weights, image_size)
            if not path.exists():
                prepare = PrepareImages(dataclasses.replace(spec, cameras=(camera,)), image_size)
                _encode_camera(encoder, reader, prepare, camera.key, path, batch_size, progress)
            tables[camera.name] = _read_table(path, reader.num_frames)
        return cls(tables)


def _encode_camera(
    encoder: nn.Module,
    reader: LeRobotDatasetReader,
    prepare: PrepareImages,
    key: str,
    path: Path,
    batch_size: int,
    progress: bool,
) -> None:
    from safetensors.torch import save_file
    from tqdm import tqdm

    was_training = encoder.training
    encoder.eval()
    table: torch.Tensor | None = None  # (F, N, C), filled in place: no second copy to concatenate
    try:
        with (
            torch.inference_mode(),
            tqdm(
                total=reader.num_frames,
                desc=f"encoding {key} once (frozen encoder)",
                unit="frame",
                mininterval=5.0,
                disable=not progress,
            ) as bar,
        ):
            # straight from the dataset's PNG or video (frozen training never reads images
            # again, so no decoded-frame cache is written for it), in batches of consecutive
            # rows: the same batches whatever the episode lengths, hence the same numbers
            for row, frames in _row_batches(reader, key, batch_size):  # (b, H, W, 3) uint8
                pixels = prepare({key: torch.from_numpy(frames)}, StepContext(training=False))[key]
                tokens = encoder.encode(pixels)  # (b, N, C)
                if table is None:
                    table = torch.empty(reader.num_frames, *tokens.shape[1:], dtype=STORAGE_DTYPE)
                table[row : row + len(tokens)] = tokens
                bar.update(len(frames))
    finally:
        encoder.train(was_training)
    if table is None:
        raise ValueError(f"{reader.root}: no frames of {key} to encode")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    save_file({"features": table.contiguous()}, str(partial))
    partial.replace(path)


def _row_batches(
    reader: LeRobotDatasetReader, key: str, batch_size: int
) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, frames (b, H, W, 3)) for rows [0, b), [b, 2b), ... of camera `key`, decoding
    one episode at a time."""
    carried: np.ndarray | None = None  # decoded frames of the rows [row, ...) not yet batched
    row = 0
    for episode in reader.episodes:
        if episode.from_index != row + (0 if carried is None else len(carried)):
            raise ValueError(f"{reader.root}: episode rows are not consecutive at {episode}")
        frames = reader.episode_frames(key, episode)
        if carried is not None:
            frames = np.concatenate([carried, frames])
        full = len(frames) - len(frames) % batch_size
        for start in range(0, full, batch_size):
            yield row + start, frames[start : start + batch_size]
        row += full
        carried = frames[full:] if full < len(frames) else None
    if carried is not None:
        yield row, carried


def _read_table(path: Path, num_frames: int) -> torch.Tensor:
    from safetensors.torch import load_file

    try:
        table = load_file(str(path))["features"]
    except Exception as error:  # noqa: BLE001 - any unreadable cache is rebuilt, never trusted
        path.unlink(missing_ok=True)
        raise RuntimeError(
            f"{path}: unreadable feature cache ({error}); removed, run again"
        ) from error
    if table.shape[0] != num_frames:
        path.unlink(missing_ok=True)
        raise RuntimeError(
            f"{path}: holds {table.shape[0]} frames, the dataset {num_frames}; removed, run again"
        )
    return table


def _weights_digest(encoder: nn.Module) -> str:
    """A digest of the encoder's tensors (weights and BatchNorm statistics), not of the projector."""
    digest = hashlib.sha1()
    state = encoder.model.state_dict() if hasattr(encoder, "model") else encoder.state_dict()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()[:16]


def _cache_path(reader: LeRobotDatasetReader, key: str, weights: str, image_size: int) -> Path:
    # same commit stamp as the decoded-frame cache: appending episodes makes a fresh file
    frame_cache = frame_cache_path(reader, key)
    # "bnfold": computed by the BatchNorm-folded encoder (vla/vision.py); caches written by the
    # unfolded one before it differ by float rounding and are not reused
    name = f"features-{frame_cache.stem}-{weights}-{image_size}-bnfold.safetensors"
    return frame_cache.parent / name
