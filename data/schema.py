"""The frame schema: every key a frame, an observation or a training sample carries, and the
observation spec (cameras, resolution, state size) a policy is trained with.

Why one module: the writer, the reader, the torch Dataset, the simulator, the policy's processor
and the server all name the same columns; when each spells them itself, a renamed or added
column silently goes missing on one path. Everything here is plain Python (no numpy, torch or
pyarrow), so the numpy-only robot side can import it too.

Keys (DESIGN.md "Frame keys", LeRobot naming):

    observation.images.<camera>  uint8 (H, W, 3), upright
    observation.state            float32 (8,)   STATE_NAMES
    action                       float32 (7,)   ACTION_NAMES
    task                         str, the instruction
    reasoning.plan / .subtask / .move / .objects   str
    reasoning.gripper_px         int16 (10,)    GRIPPER_TRACE_NAMES
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# ----------------------------------------------------------------------------- frame keys
IMAGE_KEY_PREFIX = "observation.images."
STATE_KEY = "observation.state"
ACTION_KEY = "action"
TASK_KEY = "task"
# Training samples only: which history frames / chunk steps are padding (episode boundaries).
OBSERVATION_IS_PAD_KEY = "observation_is_pad"
ACTION_IS_PAD_KEY = "action_is_pad"

PLAN_KEY = "reasoning.plan"
SUBTASK_KEY = "reasoning.subtask"
MOVE_KEY = "reasoning.move"
GRIPPER_PX_KEY = "reasoning.gripper_px"
OBJECTS_KEY = "reasoning.objects"
REASONING_FIELDS = (PLAN_KEY, SUBTASK_KEY, MOVE_KEY, GRIPPER_PX_KEY, OBJECTS_KEY)
"""The per-frame chain-of-thought columns, in canonical order."""
REASONING_TEXT_FIELDS = tuple(key for key in REASONING_FIELDS if key != GRIPPER_PX_KEY)
"""The reasoning columns stored as strings (the gripper trace is an int16 vector)."""
# The same labels of an earlier frame of the episode (ActionChunkDataset(reasoning_lag=...)): a
# stale chain, the kind a policy that reuses or mis-generates its chain reads (training only).
LAGGED_PREFIX = "lagged."


def lagged_key(key: str) -> str:
    return LAGGED_PREFIX + key


# ----------------------------------------------------------------------------- vector layouts
STATE_NAMES = (
    "eef_x", "eef_y", "eef_z", "eef_ax", "eef_ay", "eef_az", "finger_left", "finger_right",
)  # fmt: skip
ACTION_NAMES = ("dx", "dy", "dz", "dax", "day", "daz", "gripper")
GRIPPER_TRACE_POINTS = 5  # the current gripper position and the next 4
GRIPPER_TRACE_NAMES = tuple(
    f"{axis}{step}" for step in range(GRIPPER_TRACE_POINTS) for axis in ("x", "y")
)
STATE_DIM = len(STATE_NAMES)
ACTION_DIM = len(ACTION_NAMES)

# ----------------------------------------------------------------------------- cameras
DEFAULT_CAMERAS = ("agentview", "wrist")
DEFAULT_CAMERA_RESOLUTION = (128, 128)
"""(height, width) the simulator renders and `vla-data generate` stores unless told otherwise.
Only a default for making data: a trained policy's resolution is its `ObservationSpec`."""
IMAGE_DTYPE = "uint8"
STATE_DTYPE = "float32"


def image_key(camera: str) -> str:
    """`agentview` -> `observation.images.agentview` (a full key is returned unchanged)."""
    return camera if camera.startswith(IMAGE_KEY_PREFIX) else IMAGE_KEY_PREFIX + camera


def is_image_key(key: str) -> bool:
    return key.startswith(IMAGE_KEY_PREFIX)


def camera_name(key: str) -> str:
    """`observation.images.agentview` -> `agentview`."""
    if not is_image_key(key):
        raise ValueError(f"{key!r} is not a camera key (those start with {IMAGE_KEY_PREFIX!r})")
    return key[len(IMAGE_KEY_PREFIX) :]


def rename_keys(frame: Mapping[str, Any], key_map: Mapping[str, str]) -> dict[str, Any]:
    """`frame` with a robot's key names replaced by ours (`key_map`: robot key -> our key).

    Keys the map does not name pass through unchanged. Two keys landing on the same name would
    silently drop one of them, so that is an error naming both.
    """
    renamed: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in frame.items():
        ours = key_map.get(key, key)
        if ours in renamed:
            raise KeyError(
                f"keys {origin[ours]!r} and {key!r} both map to {ours!r} (key map {dict(key_map)})"
            )
        renamed[ours], origin[ours] = value, key
    return renamed


# ----------------------------------------------------------------------------- observation spec
class SpecError(ValueError):
    """An observation spec that is malformed; the message names the source and the key."""


@dataclass(frozen=True)
class CameraSpec:
    """One camera as the environment renders it and the dataset stores it: (height, width, 3) uint8.

    This is the resolution a policy was trained on, not the model's internal image size
    (`VLAConfig.image_size`): the processor resizes from this to that.
    """

    name: str
    height: int
    width: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or is_image_key(self.name):
            raise SpecError(f"a camera name is a bare name like 'agentview', got {self.name!r}")
        for side in ("height", "width"):
            value = getattr(self, side)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(
                    f"camera {self.name!r}: {side} must be a positive int, got {value!r}"
                )

    @property
    def key(self) -> str:
        return image_key(self.name)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, 3), the shape of one frame of this camera."""
        return (self.height, self.width, 3)


@dataclass(frozen=True)
class ObservationSpec:
    """What one observation must hold for a policy: its cameras at their resolution, and the
    state size. Saved in a checkpoint's config.json under "observation" so eval, the server and a
    robot read the resolution from the checkpoint instead of guessing it."""

    cameras: tuple[CameraSpec, ...]
    state_dim: int = STATE_DIM

    def __post_init__(self) -> None:
        if not self.cameras or not all(isinstance(c, CameraSpec) for c in self.cameras):
            raise SpecError(
                f"cameras must be a non-empty tuple of CameraSpec, got {self.cameras!r}"
            )
        names = [camera.name for camera in self.cameras]
        if len(set(names)) != len(names):
            raise SpecError(f"camera names must be unique, got {names}")
        if (
            isinstance(self.state_dim, bool)
            or not isinstance(self.state_dim, int)
            or self.state_dim < 1
        ):
            raise SpecError(f"state_dim must be a positive int, got {self.state_dim!r}")

    @classmethod
    def uniform(
        cls,
        cameras: Sequence[str],
        resolution: tuple[int, int] = DEFAULT_CAMERA_RESOLUTION,
        state_dim: int = STATE_DIM,
    ) -> ObservationSpec:
        """Every camera at the same (height, width)."""
        height, width = resolution
        return cls(tuple(CameraSpec(name, height, width) for name in cameras), state_dim)

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(camera.name for camera in self.cameras)

    @property
    def image_keys(self) -> tuple[str, ...]:
        return tuple(camera.key for camera in self.cameras)

    def camera(self, name_or_key: str) -> CameraSpec:
        name = camera_name(name_or_key) if is_image_key(name_or_key) else name_or_key
        for camera in self.cameras:
            if camera.name == name:
                return camera
        raise KeyError(f"no camera {name_or_key!r} in the spec; it has {list(self.camera_names)}")

    @property
    def resolution(self) -> tuple[int, int]:
        """The (height, width) shared by every camera; an error when they differ."""
        sizes = {(camera.height, camera.width) for camera in self.cameras}
        if len(sizes) != 1:
            raise ValueError(
                f"the cameras have different resolutions {sorted(sizes)}; use .camera(name)"
            )
        return next(iter(sizes))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; redundant fields (keys, dtypes) are written for readers without our code
        and checked again by `from_dict`."""
        return {
            "cameras": [
                {"name": c.name, "key": c.key, "height": c.height, "width": c.width}
                for c in self.cameras
            ],
            "image_dtype": IMAGE_DTYPE,
            "image_layout": "HWC",
            "state_key": STATE_KEY,
            "state_dim": self.state_dim,
            "state_dtype": STATE_DTYPE,
            "task_key": TASK_KEY,
        }

    @classmethod
    def from_dict(cls, payload: Any, source: str = "observation spec") -> ObservationSpec:
        """Parse `to_dict`'s output; errors start with `source` (e.g. "config.json 'observation'")
        and name the offending key."""
        if not isinstance(payload, Mapping):
            raise SpecError(f"{source}: expected a JSON object, got {type(payload).__name__}")
        known = {
            "cameras",
            "image_dtype",
            "image_layout",
            "state_key",
            "state_dim",
            "state_dtype",
            "task_key",
        }
        unknown = sorted(set(payload) - known)
        if unknown:
            raise SpecError(f"{source}: unknown key(s) {unknown}; known: {sorted(known)}")
        fixed = {
            "image_dtype": IMAGE_DTYPE,
            "image_layout": "HWC",
            "state_key": STATE_KEY,
            "state_dtype": STATE_DTYPE,
            "task_key": TASK_KEY,
        }
        for key, supported in fixed.items():
            if key in payload and payload[key] != supported:
                raise SpecError(
                    f"{source}: {key} is {payload[key]!r}; this code supports only {supported!r}"
                )
        cameras = payload.get("cameras")
        if not isinstance(cameras, list) or not cameras:
            raise SpecError(f"{source}: 'cameras' must be a non-empty list, got {cameras!r}")
        parsed = tuple(
            _camera_from_dict(entry, f"{source}: cameras[{i}]") for i, entry in enumerate(cameras)
        )
        if "state_dim" not in payload:
            raise SpecError(f"{source}: 'state_dim' is missing")
        try:
            return cls(parsed, payload["state_dim"])
        except SpecError as error:
            raise SpecError(f"{source}: {error}") from None


def _camera_from_dict(entry: Any, where: str) -> CameraSpec:
    if not isinstance(entry, Mapping):
        raise SpecError(f"{where}: expected an object with name, height, width, got {entry!r}")
    missing = [key for key in ("name", "height", "width") if key not in entry]
    unknown = sorted(set(entry) - {"name", "key", "height", "width"})
    if missing or unknown:
        raise SpecError(
            f"{where}: missing {missing} / unknown {unknown}; expected name, height, width"
        )
    try:
        camera = CameraSpec(entry["name"], entry["height"], entry["width"])
    except SpecError as error:
        raise SpecError(f"{where}: {error}") from None
    if "key" in entry and entry["key"] != camera.key:
        raise SpecError(f"{where}: key {entry['key']!r} does not match name {camera.name!r}")
    return camera
