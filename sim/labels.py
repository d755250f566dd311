"""Reasoning labels computed from simulator state (DESIGN.md `reasoning.*` keys).

Per frame: the task's plan, the current subtask (from the scripted expert's progress), a motion
primitive read off the commanded end-effector delta, the gripper's agentview pixel now and at the
next 4 frames (pinhole projection with the camera's own matrices), and the visible objects with
their 2D boxes (projected geometry, clipped to the image).

What depends on the simulator (the plan's words, how a world point lands on the stored image,
which objects have boxes) sits behind `LabelSource`: `TabletopLabels` here for our suites,
`sim.libero_labels.LiberoLabels` for real LIBERO; `label_source_of(env)` picks one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import mujoco
import numpy as np

from data.reasoning import ObjectBox, Reasoning
from data.schema import GRIPPER_TRACE_POINTS
from sim.camera import project
from sim.env import CAMERAS, TabletopEnv

MOTION_THRESHOLD = 0.15  # |action| (of 1.0 = 5 cm/step) below which an axis counts as still
GRIPPER_LABEL_STEPS = 8  # frames after a gripper command flips that are "close/open gripper"
TRACE_LENGTH = GRIPPER_TRACE_POINTS  # current + next 4 gripper positions
TABLETOP_Y_WORDS = ("right", "left")  # how +y and -y read in our suites' agentview image


def motion_primitive(
    action: np.ndarray,
    steps_since_gripper_flip: int | None,
    y_words: tuple[str, str] = TABLETOP_Y_WORDS,
) -> str:
    """'move forward left down', 'close gripper', 'open gripper' or 'stop'.

    Left and right are as seen in the agentview image (`y_words`: the words for +y and -y). In
    our suites the camera faces the robot, so image-left is the robot's right (-y), matching how
    the spatial tasks name sides; forward is away from the robot's base (+x, towards the
    camera); up is +z. A gripper that started closing or opening in the last few frames wins
    while the arm is still, because that is what the frame is about.
    """
    words = []
    for value, positive, negative in zip(
        action[:3], ("forward", y_words[0], "up"), ("backward", y_words[1], "down"), strict=True
    ):
        if value > MOTION_THRESHOLD:
            words.append(positive)
        elif value < -MOTION_THRESHOLD:
            words.append(negative)
    if (
        steps_since_gripper_flip is not None
        and steps_since_gripper_flip < GRIPPER_LABEL_STEPS
        and not words
    ):
        return "close gripper" if action[6] > 0 else "open gripper"
    return "move " + " ".join(words) if words else "stop"


class LabelSource(Protocol):
    """What one simulator's episode tells the labeler."""

    plan: tuple[str, ...]  # subtasks in order: "pick up the X", "place it on the Y", ...
    y_words: tuple[str, str]  # how +y and -y motion read in the stored agentview image

    def gripper_pixel(self) -> tuple[int, int]:
        """The grip site's pixel (x = column, y = row) in the stored image, (-1, -1) off it."""
        ...

    def object_boxes(self) -> tuple[ObjectBox, ...]:
        """The boxes of the objects seen in the stored image now."""
        ...


class TabletopLabels:
    """`LabelSource` of one of our suites' `TabletopEnv` episodes."""

    y_words = TABLETOP_Y_WORDS

    def __init__(self, env: TabletopEnv) -> None:
        self.env = env
        self.plan = env.task.plan()

    def gripper_pixel(self) -> tuple[int, int]:
        return gripper_pixel(self.env)

    def object_boxes(self) -> tuple[ObjectBox, ...]:
        return visible_objects(self.env)


def label_source_of(env: Any) -> LabelSource:
    """The `LabelSource` of an env of our suites or of LIBERO."""
    from sim.libero_env import LiberoEnv

    inner = getattr(env, "unwrapped", env)
    if isinstance(inner, TabletopEnv):
        return TabletopLabels(inner)
    if isinstance(inner, LiberoEnv):
        from sim.libero_labels import LiberoLabels

        return LiberoLabels(inner)
    raise TypeError(
        f"no reasoning labels for {type(inner).__name__}: not a TabletopEnv or LiberoEnv"
    )


@dataclass
class EpisodeLabeler:
    """Collects per-frame label inputs during an episode and turns them into reasoning columns."""

    source: LabelSource
    _subtasks: list[str] = field(default_factory=list)
    _moves: list[str] = field(default_factory=list)
    _gripper_px: list[tuple[int, int]] = field(default_factory=list)
    _objects: list[tuple[ObjectBox, ...]] = field(default_factory=list)
    _last_gripper_command: float | None = None
    _steps_since_flip: int | None = None

    @property
    def plan(self) -> tuple[str, ...]:
        return self.source.plan

    def record(self, action: np.ndarray, subtask_index: int) -> None:
        """Label the current frame, whose commanded action is `action` (call before stepping)."""
        command = float(np.sign(action[6]))
        if self._last_gripper_command is not None and command != self._last_gripper_command:
            self._steps_since_flip = 0
        elif self._steps_since_flip is not None:
            self._steps_since_flip += 1
        self._last_gripper_command = command
        self._subtasks.append(self.plan[subtask_index])
        self._moves.append(motion_primitive(action, self._steps_since_flip, self.source.y_words))
        self._gripper_px.append(self.source.gripper_pixel())
        self._objects.append(self.source.object_boxes())

    def columns(self) -> dict[str, list]:
        """Per-frame `reasoning.*` columns for the frames recorded so far."""
        frames = []
        last = len(self._gripper_px) - 1
        for index in range(len(self._gripper_px)):
            trace = [self._gripper_px[min(index + ahead, last)] for ahead in range(TRACE_LENGTH)]
            reasoning = Reasoning(
                plan=self.plan,
                subtask=self._subtasks[index],
                move=self._moves[index],
                gripper_px=tuple(point for point in trace if point[0] >= 0),
                objects=self._objects[index],
            )
            frames.append(reasoning.to_frame())
        return {key: [frame[key] for frame in frames] for key in frames[0]} if frames else {}


def gripper_pixel(env: TabletopEnv) -> tuple[int, int]:
    """The grip site's agentview pixel (x = column, y = row), or (-1, -1) when off the image."""
    height, width = env.image_size
    pixels, in_front = project(
        env.model, env.data, CAMERAS["agentview"], env.eef_position()[None], height, width
    )
    column, row = pixels[0]
    if not in_front[0] or not (0 <= column < width and 0 <= row < height):
        return (-1, -1)
    return (int(column), int(row))


def visible_objects(env: TabletopEnv) -> tuple[ObjectBox, ...]:
    """Boxes [x1, y1, x2, y2] (inclusive pixel bounds, clipped to the image) of the task's objects
    in agentview: the projection of the corners of each object's geoms. Objects wholly outside
    the image are left out. Occlusion is not modelled (a segmentation render would cost as much
    as a camera frame per step)."""
    height, width = env.image_size
    boxes = []
    for spec in env.task.objects:
        corners = np.concatenate(
            [_geom_corners(env, geom) for geom in env.object_geom_ids(spec.name)]
        )
        pixels, in_front = project(
            env.model, env.data, CAMERAS["agentview"], corners, height, width
        )
        box = clipped_box(pixels, in_front, height, width)
        if box is not None:
            boxes.append(ObjectBox(env.task.display(spec.name), box))
    return tuple(boxes)


def clipped_box(
    pixels: np.ndarray, in_front: np.ndarray, height: int, width: int
) -> tuple[int, int, int, int] | None:
    """The inclusive pixel box [x1, y1, x2, y2] of projected points (N, 2), clipped to the image;
    None when a point is behind the camera or the box lies wholly outside the image."""
    if not in_front.all():
        return None
    x1, y1 = np.floor(pixels.min(axis=0)).astype(int)
    x2, y2 = np.floor(pixels.max(axis=0)).astype(int)
    if x2 < 0 or y2 < 0 or x1 >= width or y1 >= height:
        return None
    return (int(max(x1, 0)), int(max(y1, 0)), int(min(x2, width - 1)), int(min(y2, height - 1)))


_UNIT_CORNERS = np.array(
    [[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64
)


def _geom_corners(env: TabletopEnv, geom: int) -> np.ndarray:
    """World positions (8, 3) of the corners of a box or cylinder geom's oriented bounding box."""
    size = env.model.geom_size[geom]
    if env.model.geom_type[geom] == mujoco.mjtGeom.mjGEOM_CYLINDER:
        half_extents = np.array([size[0], size[0], size[1]])
    else:
        half_extents = size[:3]
    rotation = env.data.geom_xmat[geom].reshape(3, 3)
    return env.data.geom_xpos[geom] + (_UNIT_CORNERS * half_extents) @ rotation.T
