"""Convert LIBERO demonstration files (robomimic HDF5 layout) into a vla LeRobot dataset.

LIBERO ships one HDF5 file per task: a `data` group whose attrs describe the task
(`problem_info` JSON with `language_instruction`, `bddl_file_content` with `(:language ...)`) and
one `data/demo_<n>` group per demonstration with `actions` (T, 7) and `obs/...` arrays. Each demo
becomes one episode (DESIGN.md frame keys):

* `observation.images.agentview` / `observation.images.wrist` ← `obs/agentview_rgb` /
  `obs/eye_in_hand_rgb`, rotated 180° because LIBERO renders upside down and our datasets store
  the scene upright; resized with PIL only when `image_size` asks for another size;
* `observation.state` ← concat(`obs/ee_states`, `obs/gripper_states`) as float32[8] (eef position,
  eef axis-angle, finger qpos: the same order as LIBERO's own state);
* `action` ← `actions` as float32[7] (LIBERO already uses OSC_POSE deltas at 20 Hz, as we do);
* task ← `problem_info.language_instruction`, else the BDDL `(:language ...)`, else the file name.

LIBERO has no reasoning labels, so the dataset is written without reasoning features rather than
with columns of empty strings that would look like labels. `obs/joint_states` and any other key
are not read, so files lacking them still import.

Every file is checked (keys, shapes, dtypes, frame counts) before anything is written: a bad file
at the end of a 90-file import fails in seconds, not after an hour of converting the others.

Resuming. `meta/import_sources.json` records, per episode, the source file name, demo name,
frame count and a hash of the demo's actions. A later call with the same `output` skips demos
already recorded, so an interrupted import can be rerun with the same command, and new files can
be appended (import A, then A+B imports only B). A sidecar was chosen over deriving the source
from episode order because order breaks as soon as the file list changes between calls (a file
added, reordered or dropped), and a silently duplicated or missing demo is hard to notice later.
Sources are keyed by file *name*, not full path, so a dataset and its LIBERO files can move to
another machine and still resume; the actions hash catches a different file that happens to share
a name. The sidecar entry for an episode is written *before* the writer commits it, and entries
beyond the dataset's committed `total_episodes` are dropped on load — the same rule the writer
applies to its own rows — so a crash between the two writes never leaves an episode unaccounted
for.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from data import layout
from data.features import Feature, default_features
from data.reader import LeRobotDatasetReader
from data.schema import ACTION_KEY, STATE_KEY, image_key
from data.writer import LeRobotDatasetWriter

LIBERO_FPS = 20
SOURCES_PATH = "meta/import_sources.json"
SOURCES_FORMAT_VERSION = 1

# Our feature key -> LIBERO key, for the two cameras.
CAMERA_SOURCES = {
    image_key("agentview"): "obs/agentview_rgb",
    image_key("wrist"): "obs/eye_in_hand_rgb",
}
# LIBERO vector keys the conversion reads -> number of values per step.
VECTOR_WIDTHS = {"actions": 7, "obs/ee_states": 6, "obs/gripper_states": 2}

_DEMO_NAME = re.compile(r"demo_(\d+)")
_BDDL_LANGUAGE = re.compile(r"\(:language\s+([^)]*)\)", re.IGNORECASE)
# "KITCHEN_SCENE3_", "LIVING_ROOM_SCENE10_": LIBERO-90/10 prefix a scene id to the task words.
_SCENE_PREFIX = re.compile(r"^(?:[A-Z][A-Z0-9]*_)*SCENE\d+_")


class LiberoImportError(ValueError):
    """A LIBERO file or the output directory cannot be used as is; the message says which, why."""


@dataclass(frozen=True)
class ImportSummary:
    """What one call did: `episodes`/`frames` written now; `skipped` demos were there before."""

    files: int
    episodes: int
    frames: int
    skipped: int


@dataclass(frozen=True)
class _SourceFile:
    """A checked LIBERO file: safe to convert without further key or shape checks."""

    path: Path
    task: str
    demos: tuple[str, ...]  # numeric order: demo_2 before demo_10
    image_size: tuple[int, int]  # agentview (height, width)


def import_libero_hdf5(
    hdf5_paths: Sequence[str | Path],
    output: str | Path,
    *,
    video: bool = False,
    image_size: tuple[int, int] | None = None,
    progress: bool = True,
) -> ImportSummary:
    """Append every demo of `hdf5_paths` to the dataset at `output` (created if absent).

    `image_size` is (height, width); `None` keeps the first file's agentview size. Rerunning with
    the same `output` resumes: demos imported before are skipped, not duplicated (see module doc).
    Raises `LiberoImportError` naming the file and key for a malformed file, before writing.
    """
    paths = _unique_paths(hdf5_paths)
    sources = [_inspect_file(path) for path in paths]
    target_size = _target_image_size(image_size, sources[0])
    output = Path(output)
    features = default_features(target_size, video=video, reasoning=False)
    _check_resumable(output, features)
    writer = LeRobotDatasetWriter(output, features=features, fps=LIBERO_FPS, robot_type="panda")
    ledger = _ImportLedger.load(output, committed_episodes=writer.num_episodes)

    episodes = frames = skipped = 0
    with _progress_bar(enabled=progress) as bar:
        bar_task = bar.add_task("LIBERO", total=sum(len(source.demos) for source in sources))
        for source in sources:
            bar.update(bar_task, description=source.path.name)
            with h5py.File(source.path, "r") as file:
                for demo in source.demos:
                    group = file["data"][demo]
                    actions = group["actions"][()]
                    if ledger.already_imported(source.path, demo, actions):
                        skipped += 1
                    else:
                        columns = _convert_demo(source.path, demo, group, actions, target_size)
                        ledger.record_before_commit(source.path, demo, actions, writer.num_episodes)
                        writer.add_episode(columns, task=source.task)
                        episodes += 1
                        frames += len(actions)
                    bar.advance(bar_task)
    writer.finalize()
    return ImportSummary(files=len(sources), episodes=episodes, frames=frames, skipped=skipped)


def task_from_file_name(file_name: str) -> str:
    """LIBERO's task words from a file name.

    `KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5` → `turn on the stove`. The last resort for files
    whose attrs lost the instruction; LIBERO names every file this way.
    """
    stem = Path(file_name).stem
    stem = _SCENE_PREFIX.sub("", stem.removesuffix("_demo"))
    return " ".join(stem.replace("_", " ").split())


# ---------------------------------------------------------------------- checking source files
def _unique_paths(hdf5_paths: Sequence[str | Path]) -> list[Path]:
    if isinstance(hdf5_paths, (str, Path)):  # one path passed bare: iterating a str gives chars
        hdf5_paths = [hdf5_paths]
    paths = list(dict.fromkeys(Path(path).resolve() for path in hdf5_paths))
    if not paths:
        raise LiberoImportError("no LIBERO files given: pass at least one *.hdf5 path")
    by_name: dict[str, Path] = {}
    for path in paths:
        if path.name in by_name:
            raise LiberoImportError(
                f"{by_name[path.name]} and {path} share a file name, which is how a resumed import "
                f"recognises a source: rename one of them"
            )
        by_name[path.name] = path
    return paths


def _inspect_file(path: Path) -> _SourceFile:
    if not path.is_file():
        raise LiberoImportError(f"{path}: no such file")
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise LiberoImportError(f"{path}: not a readable HDF5 file ({error})") from None
    with file:
        data = file.get("data")
        if not isinstance(data, h5py.Group):
            raise LiberoImportError(
                f"{path}: missing group 'data' (expected a LIBERO/robomimic demonstration file)"
            )
        demos = _demo_names(path, data)
        for demo in demos:
            _check_demo(path, demo, data[demo])
        agentview_shape = data[demos[0]][CAMERA_SOURCES[image_key("agentview")]].shape
        return _SourceFile(
            path=path,
            task=_task_text(path, data),
            demos=demos,
            image_size=(int(agentview_shape[1]), int(agentview_shape[2])),
        )


def _demo_names(path: Path, data: h5py.Group) -> tuple[str, ...]:
    numbered = []
    for name in data.keys():
        match = _DEMO_NAME.fullmatch(name)
        if match:
            numbered.append((int(match.group(1)), name))
    if not numbered:
        raise LiberoImportError(f"{path}: no demo_<n> groups under 'data'")
    return tuple(name for _, name in sorted(numbered))


def _check_demo(path: Path, demo: str, group: Any) -> None:
    """Every key the conversion reads exists with one row per step and the right row shape."""
    if not isinstance(group, h5py.Group):
        raise LiberoImportError(f"{path}: data/{demo} is not a group")
    frame_counts: dict[str, int] = {}
    for key, width in VECTOR_WIDTHS.items():
        dataset = _dataset(path, demo, group, key)
        if dataset.ndim != 2 or dataset.shape[1] != width:
            raise LiberoImportError(
                f"{path}: data/{demo}/{key} has shape {dataset.shape}, expected (T, {width})"
            )
        if dataset.dtype.kind not in "fiu":
            raise LiberoImportError(
                f"{path}: data/{demo}/{key} has dtype {dataset.dtype}, expected numbers"
            )
        frame_counts[key] = dataset.shape[0]
    for key in CAMERA_SOURCES.values():
        dataset = _dataset(path, demo, group, key)
        if dataset.ndim != 4 or dataset.shape[3] != 3:
            raise LiberoImportError(
                f"{path}: data/{demo}/{key} has shape {dataset.shape}, expected (T, H, W, 3)"
            )
        if dataset.dtype != np.uint8:
            raise LiberoImportError(
                f"{path}: data/{demo}/{key} has dtype {dataset.dtype}, expected uint8"
            )
        frame_counts[key] = dataset.shape[0]
    _check_frame_counts(path, demo, group, frame_counts)


def _dataset(path: Path, demo: str, group: h5py.Group, key: str) -> h5py.Dataset:
    found = group.get(key)
    if found is None:
        raise LiberoImportError(f"{path}: missing key data/{demo}/{key}")
    if not isinstance(found, h5py.Dataset):
        raise LiberoImportError(f"{path}: data/{demo}/{key} is a group, expected an array")
    return found


def _check_frame_counts(
    path: Path, demo: str, group: h5py.Group, frame_counts: dict[str, int]
) -> None:
    steps = frame_counts["actions"]
    for key, count in frame_counts.items():
        if count != steps:
            raise LiberoImportError(
                f"{path}: data/{demo}/{key} has {count} steps but data/{demo}/actions has {steps}; "
                f"every array of a demo needs one row per step"
            )
    if steps == 0:
        raise LiberoImportError(f"{path}: data/{demo}/actions has no steps")
    num_samples = group.attrs.get("num_samples")
    if num_samples is not None and int(num_samples) != steps:
        raise LiberoImportError(
            f"{path}: data/{demo} attr num_samples is {int(num_samples)} "
            f"but its arrays have {steps} steps"
        )


# ---------------------------------------------------------------------- task text
def _task_text(path: Path, data: h5py.Group) -> str:
    """The instruction, from the most direct source LIBERO files carry."""
    problem_info = _json_attr(path, data, "problem_info")
    instruction = problem_info.get("language_instruction")
    if isinstance(instruction, (list, tuple)):  # some exporters keep LIBERO's token list
        instruction = " ".join(str(word) for word in instruction)
    if isinstance(instruction, str) and instruction.strip():
        return " ".join(instruction.split())
    bddl = _text_attr(data, "bddl_file_content") or problem_info.get("bddl_file_content")
    match = _BDDL_LANGUAGE.search(bddl) if isinstance(bddl, str) else None
    if match and match.group(1).strip():
        # LIBERO's own BDDL parser lowercases, so this matches what problem_info would have said.
        return " ".join(match.group(1).lower().split())
    from_name = task_from_file_name(path.name)
    if from_name:
        return from_name
    raise LiberoImportError(
        f"{path}: no task instruction: data attr problem_info has no language_instruction, "
        f"bddl_file_content has no (:language ...), and the file name holds no task words"
    )


def _text_attr(group: h5py.Group, name: str) -> str | None:
    value = group.attrs.get(name)
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode("utf-8")
    return value if isinstance(value, str) else None


def _json_attr(path: Path, group: h5py.Group, name: str) -> dict[str, Any]:
    text = _text_attr(group, name)
    if text is None:
        return {}
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise LiberoImportError(f"{path}: data attr {name} is not valid JSON ({error})") from None
    if not isinstance(parsed, dict):
        raise LiberoImportError(
            f"{path}: data attr {name} should be a JSON object, got {type(parsed).__name__}"
        )
    return parsed


# ---------------------------------------------------------------------- conversion
def _target_image_size(image_size: tuple[int, int] | None, first: _SourceFile) -> tuple[int, int]:
    if image_size is None:
        return first.image_size
    if len(image_size) != 2 or any(int(side) != side or side < 1 for side in image_size):
        raise LiberoImportError(
            f"image_size must be (height, width) in positive pixels, got {image_size}"
        )
    return (int(image_size[0]), int(image_size[1]))


def _convert_demo(
    path: Path, demo: str, group: h5py.Group, actions: np.ndarray, image_size: tuple[int, int]
) -> dict[str, np.ndarray]:
    parts = {
        key: group[key][()].astype(np.float32) for key in ("obs/ee_states", "obs/gripper_states")
    }
    parts["actions"] = actions.astype(np.float32)
    for key, values in parts.items():
        if not np.isfinite(values).all():
            row = int(np.argwhere(~np.isfinite(values))[0, 0])
            raise LiberoImportError(
                f"{path}: data/{demo}/{key} holds NaN/Inf (or exceeds float32) at step {row}"
            )
    columns: dict[str, np.ndarray] = {
        STATE_KEY: np.concatenate([parts["obs/ee_states"], parts["obs/gripper_states"]], axis=1),
        ACTION_KEY: parts["actions"],
    }
    for feature_key, source_key in CAMERA_SOURCES.items():
        columns[feature_key] = _upright(group[source_key][()], image_size)
    return columns


def _upright(frames: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """(T, H, W, 3) as rendered by LIBERO → upright and at `image_size` (height, width)."""
    rotated = np.ascontiguousarray(frames[:, ::-1, ::-1])  # 180°: the same as np.rot90(frame, 2)
    if rotated.shape[1:3] == tuple(image_size):
        return rotated
    height, width = image_size
    return np.stack(
        [
            np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC))
            for frame in rotated
        ]
    )


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("demos"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


# ---------------------------------------------------------------------- resuming
def _check_resumable(output: Path, features: dict[str, Feature]) -> None:
    """Fail with the differing feature, not the writer's generic mismatch, when flags changed."""
    if not (output / layout.INFO_PATH).exists():
        return
    existing = LeRobotDatasetReader(output).features
    if existing == features:
        return
    differences = [
        f"{key}: has {_describe(existing.get(key))}, "
        f"this import writes {_describe(features.get(key))}"
        for key in sorted(set(existing) | set(features))
        if existing.get(key) != features.get(key)
    ]
    raise LiberoImportError(
        f"{output} already holds a dataset with other features ({'; '.join(differences)}). "
        f"To resume, pass the same image_size and video as the first import; otherwise choose a "
        f"new output directory"
    )


def _describe(feature: Feature | None) -> str:
    return "nothing" if feature is None else f"{feature.dtype} {feature.shape}"


def _actions_digest(actions: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(actions, dtype=np.float64).tobytes()).hexdigest()


class _ImportLedger:
    """`meta/import_sources.json`: which source demo each committed episode came from."""

    def __init__(self, root: Path, entries: list[dict[str, Any]]) -> None:
        self.path = root / SOURCES_PATH
        self.entries = entries
        self._by_source = {(entry["file"], entry["demo"]): entry for entry in entries}

    @classmethod
    def load(cls, root: Path, committed_episodes: int) -> _ImportLedger:
        path = root / SOURCES_PATH
        if not path.exists():
            if committed_episodes:
                raise LiberoImportError(
                    f"{root} holds {committed_episodes} episodes but no {SOURCES_PATH}, so it was "
                    f"not written by this importer and resuming could duplicate demos: choose a "
                    f"new output directory"
                )
            return cls(root, [])
        entries = cls._read_entries(path)
        if len(entries) < committed_episodes:
            raise LiberoImportError(
                f"{path} accounts for {len(entries)} episodes but {root} holds "
                f"{committed_episodes}: something else appended to this dataset, so resuming could "
                f"duplicate demos; choose a new output directory"
            )
        # Entries past the committed total were recorded for an episode whose commit never happened.
        return cls(root, entries[:committed_episodes])

    @staticmethod
    def _read_entries(path: Path) -> list[dict[str, Any]]:
        try:
            payload = json.loads(path.read_text())
            entries = payload["episodes"]
            for position, entry in enumerate(entries):
                if entry["episode_index"] != position or not {
                    "file",
                    "demo",
                    "actions_sha256",
                } <= set(entry):
                    raise ValueError(f"entry {position} is malformed: {entry}")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise LiberoImportError(f"{path}: unreadable import record ({error})") from None
        return entries

    def already_imported(self, source: Path, demo: str, actions: np.ndarray) -> bool:
        entry = self._by_source.get((source.name, demo))
        if entry is None:
            return False
        if entry["actions_sha256"] != _actions_digest(actions):
            raise LiberoImportError(
                f"{source}: data/{demo}/actions differ from those of episode "
                f"{entry['episode_index']}, imported earlier from a file of the same name "
                f"({entry.get('path')}). Rename the file if it is a different task, or choose a "
                f"new output directory"
            )
        return True

    def record_before_commit(
        self, source: Path, demo: str, actions: np.ndarray, episode_index: int
    ) -> None:
        entry = {
            "episode_index": episode_index,
            "file": source.name,
            "demo": demo,
            "frames": int(len(actions)),
            "actions_sha256": _actions_digest(actions),
            "path": str(source),
        }
        self.entries.append(entry)
        self._by_source[(source.name, demo)] = entry
        layout.atomic_write_json(
            self.path, {"version": SOURCES_FORMAT_VERSION, "episodes": self.entries}
        )
