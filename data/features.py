"""Feature schema shared by the writer, the reader and the torch Dataset.

A feature is one per-frame column. The `info.json` of a LeRobot dataset stores each as
`{"dtype", "shape", "names"}`; keeping that as the single description means a dataset written here
opens in LeRobot's tools and a LeRobot dataset opens here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from data.schema import (
    ACTION_KEY,
    ACTION_NAMES,
    DEFAULT_CAMERA_RESOLUTION,
    DEFAULT_CAMERAS,
    GRIPPER_PX_KEY,
    GRIPPER_TRACE_NAMES,
    REASONING_FIELDS,
    STATE_KEY,
    STATE_NAMES,
    CameraSpec,
    ObservationSpec,
    camera_name,
    image_key,
    is_image_key,
)

# Columns every LeRobot dataset carries in its data files, in addition to the user's features.
INDEX_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}

VISUAL_DTYPES = ("image", "video")
NUMERIC_DTYPES = ("float32", "float64", "int16", "int32", "int64", "uint8", "bool")
TEXT_DTYPES = ("string",)


@dataclass(frozen=True)
class Feature:
    """One per-frame column: its dtype (a numeric dtype, "string", "image" or "video") and shape."""

    dtype: str
    shape: tuple[int, ...]
    names: list[str] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        known = VISUAL_DTYPES + NUMERIC_DTYPES + TEXT_DTYPES
        if self.dtype not in known:
            raise ValueError(f"feature dtype {self.dtype!r} is not one of {', '.join(known)}")
        if self.is_visual and (len(self.shape) != 3 or self.shape[2] != 3):
            raise ValueError(f"image/video features are (height, width, 3); got shape {self.shape}")

    @property
    def is_visual(self) -> bool:
        return self.dtype in VISUAL_DTYPES

    @property
    def is_numeric(self) -> bool:
        return self.dtype in NUMERIC_DTYPES

    @property
    def size(self) -> int:
        """Number of scalars per frame of a numeric feature."""
        size = 1
        for dim in self.shape:
            size *= dim
        return size

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape), "names": self.names}

    @classmethod
    def from_json(cls, key: str, spec: Any, source: str) -> Feature:
        """Parse an info.json feature entry; `source` names the file for error messages."""
        if not isinstance(spec, dict) or "dtype" not in spec or "shape" not in spec:
            raise ValueError(
                f"{source}: feature {key!r} must be an object with 'dtype' and 'shape', got {spec!r}"
            )
        raw_shape = spec["shape"]
        if not isinstance(raw_shape, list | tuple) or not all(
            isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in raw_shape
        ):
            raise ValueError(
                f"{source}: feature {key!r} has shape {raw_shape!r}; expected a list of "
                "non-negative integers, e.g. [8] or [256, 256, 3]"
            )
        shape = tuple(raw_shape)
        dtype = spec["dtype"]
        if dtype in VISUAL_DTYPES and len(shape) == 3 and shape[0] == 3 and shape[2] != 3:
            # Some LeRobot datasets record (channels, height, width); frames are stored HWC anyway.
            shape = (shape[1], shape[2], shape[0])
        try:
            return cls(dtype=dtype, shape=shape, names=spec.get("names"))
        except ValueError as error:
            raise ValueError(f"{source}: feature {key!r}: {error}") from None

    def arrow_type(self) -> pa.DataType:
        """How the column is stored in parquet.

        Images are stored as LeRobot / HF datasets do (a struct of encoded bytes and a path), so a
        dataset written here opens with their tools. Vectors are fixed-size lists, which pyarrow hands
        to numpy without copying.
        """
        if self.dtype == "image":
            return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        if self.dtype == "video":
            raise ValueError("video features live in mp4 files, not in parquet columns")
        if self.dtype == "string":
            return pa.string()
        scalar = pa.from_numpy_dtype(self.dtype)
        if self.shape in ((), (1,)):
            return scalar
        return pa.list_(scalar, self.size)

    def huggingface_type(self) -> dict[str, Any]:
        """The column as HF `datasets` describes it in a parquet file's `huggingface` schema
        metadata, which LeRobot's writer records: with it, `datasets.Dataset.from_parquet` decodes
        images as images and vectors as fixed-length lists without being told the features."""
        if self.dtype == "image":
            return {"_type": "Image"}
        if self.dtype == "video":
            raise ValueError("video features live in mp4 files, not in parquet columns")
        value = {"dtype": self.dtype, "_type": "Value"}
        if self.dtype == "string" or self.shape in ((), (1,)):
            return value
        return {"feature": value, "length": self.size, "_type": "List"}


def huggingface_metadata(features: Mapping[str, Feature]) -> dict[bytes, bytes]:
    """The `huggingface` schema metadata of a data file holding `features` and the index columns."""
    columns = {key: feature for key, feature in features.items() if feature.dtype != "video"}
    columns.update(
        {key: Feature(spec["dtype"], tuple(spec["shape"])) for key, spec in INDEX_FEATURES.items()}
    )
    described = {key: feature.huggingface_type() for key, feature in columns.items()}
    return {b"huggingface": json.dumps({"info": {"features": described}}).encode()}


def default_features(
    image_size: tuple[int, int] = DEFAULT_CAMERA_RESOLUTION,
    cameras: tuple[str, ...] = DEFAULT_CAMERAS,
    video: bool = False,
    reasoning: bool = True,
) -> dict[str, Feature]:
    """The per-frame features of a vla dataset (data/schema.py keys)."""
    height, width = image_size
    visual_dtype = "video" if video else "image"
    features: dict[str, Feature] = {
        image_key(camera): Feature(
            visual_dtype, (height, width, 3), ["height", "width", "channels"]
        )
        for camera in cameras
    }
    features[STATE_KEY] = Feature("float32", (len(STATE_NAMES),), list(STATE_NAMES))
    features[ACTION_KEY] = Feature("float32", (len(ACTION_NAMES),), list(ACTION_NAMES))
    if reasoning:
        features.update(reasoning_features())
    return features


def reasoning_features() -> dict[str, Feature]:
    """Per-frame chain-of-thought labels computed from simulator state (schema REASONING_FIELDS)."""
    gripper_trace = Feature("int16", (len(GRIPPER_TRACE_NAMES),), list(GRIPPER_TRACE_NAMES))
    return {
        key: gripper_trace if key == GRIPPER_PX_KEY else Feature("string", (1,))
        for key in REASONING_FIELDS
    }


def observation_spec(
    features: Mapping[str, Feature], cameras: Sequence[str] | None = None, source: str = "dataset"
) -> ObservationSpec:
    """The observation spec of a dataset's features: each camera's (height, width) as stored and
    the state size. `cameras` picks (and orders) cameras, default all; `source` names the dataset
    in errors (e.g. its info.json)."""
    available = [
        key for key, feature in features.items() if is_image_key(key) and feature.is_visual
    ]
    keys = available if cameras is None else [image_key(camera) for camera in cameras]
    missing = [key for key in keys if key not in available]
    if missing:
        raise KeyError(f"{source}: no camera feature(s) {missing}; it has {available}")
    if STATE_KEY not in features:
        raise KeyError(f"{source}: no {STATE_KEY!r} feature; it has {sorted(features)}")
    specs = []
    for key in keys:
        height, width, _ = features[key].shape
        specs.append(CameraSpec(camera_name(key), height, width))
    return ObservationSpec(tuple(specs), state_dim=features[STATE_KEY].size)
