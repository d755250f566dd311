"""Small fake LIBERO demonstration files, so the importer can be tested and demoed offline.

Real LIBERO files are gigabytes and come from the hub; these have exactly the keys and attributes
the importer reads (robomimic layout, LIBERO's attrs), with values that make the conversion
checkable:

* every image carries a solid marker in the top-left corner *of the upright scene*
  (`AGENTVIEW_MARKER_COLOR`, `WRIST_MARKER_COLOR`, `MARKER_SIZE` pixels square); the file stores
  the frame the way LIBERO renders it, rotated 180°, so the marker sits bottom-right on disk and
  must come back top-left after import. The rest of the image is random 4x4 squares darker than
  the marker, so the marker is unambiguous and any flip other than 180° (or a one-pixel shift)
  changes the pixels;
* each camera has its own marker colour, so swapping agentview and wrist is caught;
* numeric arrays are random per demo (seeded), so equality with the source proves that frames
  went to the right episode in the right order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from data.schema import DEFAULT_CAMERA_RESOLUTION

MARKER_SIZE = 8
AGENTVIEW_MARKER_COLOR = (255, 0, 0)
WRIST_MARKER_COLOR = (0, 255, 0)
_NOISE_MAX = 200  # background stays below the marker's saturated channel
_BLOCK = 4  # side of the background's random squares, in pixels


def write_synthetic_libero_hdf5(
    path: str | Path,
    *,
    num_demos: int = 3,
    length: int | Sequence[int] = 12,
    seed: int = 0,
    instruction: str = "put the bowl on the plate",
    image_size: tuple[int, int] = DEFAULT_CAMERA_RESOLUTION,
) -> Path:
    """Write a LIBERO-shaped demonstration file and return its path.

    `length` may be one length for every demo or one per demo: different lengths let a test see
    whether demos were imported in the right order. Name the file like LIBERO does
    (`KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5`) to exercise task-from-file-name parsing.
    """
    path = Path(path)
    lengths = _demo_lengths(num_demos, length)
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as file:
        data = file.create_group("data")
        _write_file_attrs(data, path, instruction)
        for demo_index, demo_length in enumerate(lengths):
            _write_demo(data.create_group(f"demo_{demo_index}"), demo_length, image_size, rng)
    return path


def upright_marker_is_top_left(image: np.ndarray, color: tuple[int, int, int]) -> bool:
    """Whether an upright (H, W, 3) frame shows `color` in its top-left marker square."""
    return bool((image[:MARKER_SIZE, :MARKER_SIZE] == np.asarray(color, dtype=np.uint8)).all())


# ---------------------------------------------------------------------- internals
def _demo_lengths(num_demos: int, length: int | Sequence[int]) -> list[int]:
    if num_demos < 1:
        raise ValueError(f"num_demos must be at least 1, got {num_demos}")
    lengths = [int(length)] * num_demos if isinstance(length, int) else [int(n) for n in length]
    if len(lengths) != num_demos:
        raise ValueError(f"got {len(lengths)} lengths for {num_demos} demos")
    if min(lengths) < 1:
        raise ValueError(f"every demo needs at least one step, got lengths {lengths}")
    return lengths


def _write_file_attrs(data: h5py.Group, path: Path, instruction: str) -> None:
    """The attrs LIBERO's `create_dataset.py` puts on the `data` group that the importer reads."""
    task_name = path.stem.removesuffix("_demo")
    bddl_file_name = f"libero/libero/bddl_files/synthetic/{task_name}.bddl"
    data.attrs["env_args"] = json.dumps(
        {
            "type": 1,
            "env_name": "Libero_Tabletop_Manipulation",
            "problem_name": "libero_tabletop_manipulation",
            "bddl_file": bddl_file_name,
            "env_kwargs": {"robots": ["Panda"], "controller": "OSC_POSE", "control_freq": 20},
        }
    )
    data.attrs["problem_info"] = json.dumps(
        {
            "problem_name": "libero_tabletop_manipulation",
            "domain_name": "robosuite",
            "language_instruction": instruction,
        }
    )
    data.attrs["bddl_file_name"] = bddl_file_name
    data.attrs["bddl_file_content"] = _bddl_text(instruction)


def _bddl_text(instruction: str) -> str:
    return (
        "(define (problem LIBERO_Tabletop_Manipulation)\n"
        "  (:domain robosuite)\n"
        f"  (:language {instruction})\n"
        "  (:objects bowl_1 - bowl plate_1 - plate)\n"
        "  (:init (On bowl_1 table) (On plate_1 table))\n"
        "  (:goal (And (On bowl_1 plate_1)))\n"
        ")\n"
    )


def _write_demo(
    demo: h5py.Group, length: int, image_size: tuple[int, int], rng: np.random.Generator
) -> None:
    demo.attrs["num_samples"] = length
    actions = rng.uniform(-1.0, 1.0, size=(length, 7))
    actions[:, 6] = np.where(rng.random(length) < 0.5, -1.0, 1.0)  # gripper: -1 open, +1 close
    demo.create_dataset("actions", data=actions.astype(np.float64))
    obs = demo.create_group("obs")
    obs.create_dataset(
        "agentview_rgb", data=_rendered_frames(length, image_size, AGENTVIEW_MARKER_COLOR, rng)
    )
    obs.create_dataset(
        "eye_in_hand_rgb", data=_rendered_frames(length, image_size, WRIST_MARKER_COLOR, rng)
    )
    eef_position = np.cumsum(rng.normal(0.0, 0.01, size=(length, 3)), axis=0) + [0.0, 0.0, 1.0]
    eef_axis_angle = rng.normal([np.pi, 0.0, 0.0], 0.05, size=(length, 3))
    obs.create_dataset("ee_states", data=np.concatenate([eef_position, eef_axis_angle], axis=1))
    finger = rng.uniform(0.0, 0.04, size=(length, 1))
    obs.create_dataset("gripper_states", data=np.concatenate([finger, -finger], axis=1))
    obs.create_dataset("joint_states", data=rng.uniform(-2.0, 2.0, size=(length, 7)))


def _rendered_frames(
    length: int,
    image_size: tuple[int, int],
    marker_color: tuple[int, int, int],
    rng: np.random.Generator,
) -> np.ndarray:
    """Frames as LIBERO stores them: the upright scene (marker top-left) rotated 180°."""
    height, width = image_size
    # Random 4x4 blocks rather than per-pixel noise: as asymmetric, but PNG-compressible, so a demo
    # dataset of thousands of frames stays small and quick to write.
    blocks_high, blocks_wide = -(-height // _BLOCK), -(-width // _BLOCK)
    blocks = rng.integers(0, _NOISE_MAX, size=(length, blocks_high, blocks_wide, 3), dtype=np.uint8)
    upright = blocks.repeat(_BLOCK, axis=1).repeat(_BLOCK, axis=2)[:, :height, :width].copy()
    upright[:, :MARKER_SIZE, :MARKER_SIZE] = marker_color
    return np.ascontiguousarray(np.rot90(upright, 2, axes=(1, 2)))
