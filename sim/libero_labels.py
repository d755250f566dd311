"""Reasoning labels on real LIBERO, computed as on our suites (`sim.labels`) from privileged state.

- **plan**: the BDDL goal's steps in the expert's order (`sim.libero_expert.goal_steps`): a place
  step as "pick up the X" / "place it on the Y", the words our suites use; a joint step as
  "reach the bottom drawer of the white cabinet" / "push it closed", or "grasp the knob of the
  flat stove" / "turn it on". The instruction itself stays the task.
- **names**: a LIBERO object's name without its instance number ("akita_black_bowl_1" ->
  "akita black bowl"), keeping the number only where the scene holds two of a kind ("akita black
  bowl 1"), so that a name picks one box. A goal region names its owner and the region's part
  ("wooden_cabinet_1_top_region" -> "top of the wooden cabinet"; a basket's "contain" region is
  just "basket").
- **pixels**: the pinhole projection of `sim.camera.project`, mirrored left-right. LIBERO's images
  are stored rotated by 180° (DESIGN.md; as the public conversions store them), and robosuite's
  raw frame is the camera's view upside down, so the stored frame is the camera's view mirrored:
  column x of the camera is column W - x of the image, rows are unchanged.
- **motion words**: "left" and "right" as seen in that image. The camera faces the robot, and
  the mirror puts the robot's left (+y) on the image's left: the opposite of our suites' images.
- **boxes**: every movable object of the scene and each fixture a goal names, from the corners
  of their visual geoms' bounding boxes (what a segmentation render shows), clipped to the image.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np

from data.reasoning import ObjectBox
from sim.camera import project
from sim.labels import clipped_box
from sim.libero_env import LiberoEnv
from sim.libero_expert import goal_steps, subtree_bodies
from sim.tasks import JointStep

CAMERA = "agentview"
LIBERO_Y_WORDS = ("left", "right")  # how +y and -y read in LIBERO's stored agentview image
# Region parts that only say "inside it" or "on it": "basket_1_contain_region" is the basket.
PLAIN_PARTS = {"contain", "cook", "heating", "top_side"}

_UNIT_CORNERS = np.array(
    [[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64
)


class LiberoLabels:
    """`sim.labels.LabelSource` of one `LiberoEnv` episode (module docstring).

    Built after the env's reset, since the objects' names and geoms come from the loaded scene."""

    y_words = LIBERO_Y_WORDS

    def __init__(self, env: LiberoEnv) -> None:
        self.env = env
        self.task_env: Any = env.libero_env.env
        self._model = self.task_env.sim.model._model
        self._data = self.task_env.sim.data._data
        steps = goal_steps(self.task_env.parsed_problem["goal_state"], self.task_env)
        movable = list(self.task_env.objects_dict)
        owners = [self._owner(step.target) for step in steps]
        self.labelled = movable + [o for o in dict.fromkeys(owners) if o and o not in movable]
        self.names = object_display_names(self.labelled)
        plan: list[str] = []
        for step in steps:
            if isinstance(step, JointStep):
                plan.extend(self._joint_subtasks(step))
                continue
            plan.append(f"pick up the {self.names[step.obj]}")
            plan.append(f"place it {step.relation} the {self.target_name(step.target)}")
        self.plan = tuple(plan)
        self._geoms = {name: self._visual_geoms(name) for name in self.labelled}

    # ------------------------------------------------------------------ LabelSource
    def gripper_pixel(self) -> tuple[int, int]:
        """The grip site's pixel in the stored image (x = column, y = row); (-1, -1) if off it."""
        robot = self.task_env.robots[0]
        pixels, in_front = self.image_pixels(self._data.site_xpos[robot.eef_site_id][None])
        height, width = self.env.image_size
        column, row = np.floor(pixels[0]).astype(int)
        if not in_front[0] or not (0 <= column < width and 0 <= row < height):
            return (-1, -1)
        return (int(column), int(row))

    def object_boxes(self) -> tuple[ObjectBox, ...]:
        """Boxes [x1, y1, x2, y2] (inclusive, clipped) of the labelled objects seen in the image;
        occlusion is not modelled, as on our suites."""
        height, width = self.env.image_size
        boxes = []
        for name in self.labelled:
            corners = np.concatenate([self._geom_corners(geom) for geom in self._geoms[name]])
            box = clipped_box(*self.image_pixels(corners), height, width)
            if box is not None:
                boxes.append(ObjectBox(self.names[name], box))
        return tuple(boxes)

    # ------------------------------------------------------------------ geometry
    def image_pixels(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Continuous (x, y) in the stored image (N, 2) of world points (N, 3), and the mask of
        points in front of the camera."""
        height, width = self.env.image_size
        pixels, in_front = project(self._model, self._data, CAMERA, points, height, width)
        pixels[:, 0] = width - pixels[:, 0]  # the stored image is the camera's view mirrored
        return pixels, in_front

    def geoms_of(self, name: str) -> list[int]:
        """The visual geoms whose boxes make `name`'s label box."""
        return self._geoms[name]

    def _visual_geoms(self, name: str) -> list[int]:
        bodies = subtree_bodies(self._model, self.task_env.obj_body_id[name])
        in_subtree = [g for g in range(self._model.ngeom) if self._model.geom_bodyid[g] in bodies]
        visual = [g for g in in_subtree if self._model.geom_group[g] == 1]
        if not (visual or in_subtree):
            raise RuntimeError(f"LIBERO object {name!r} has no geoms to draw a box from")
        return visual or in_subtree

    def _geom_corners(self, geom: int) -> np.ndarray:
        """World positions (8, 3) of the corners of the geom's posed bounding box."""
        centre, half = self._model.geom_aabb[geom][:3], self._model.geom_aabb[geom][3:]
        rotation = self._data.geom_xmat[geom].reshape(3, 3)
        return self._data.geom_xpos[geom] + (centre + _UNIT_CORNERS * half) @ rotation.T

    # ------------------------------------------------------------------ names
    def _owner(self, target: str) -> str | None:
        """The object or fixture a goal target is, or whose region it is."""
        if target in self.task_env.obj_body_id:
            return target
        site = self.task_env.object_sites_dict.get(target)
        parent = getattr(site, "parent_name", None)
        return parent if parent in self.task_env.obj_body_id else None

    def _joint_subtasks(self, step: JointStep) -> tuple[str, str]:
        """The two subtasks of a joint step: reaching the part, then moving it."""
        if step.change == "turnon":
            return (f"grasp the knob of the {self.target_name(step.target)}", "turn it on")
        owner = self._owner(step.target)
        part = self.target_name(step.target)
        if owner is not None and owner != step.target:  # a cabinet's region: its drawer
            region = re.sub(r"_region$", "", step.target[len(owner) :].strip("_"))
            part = f"{_drawer_words(_words(region))} of the {self.names[owner]}"
        return (f"reach the {part}", "push it closed")

    def target_name(self, target: str) -> str:
        """'plate', 'basket' (its contain region), 'top of the wooden cabinet', ..."""
        owner = self._owner(target)
        if owner is None:  # a region of the table: its own words ("stove front region")
            return _words(re.sub(r"^(main|kitchen|living_room|study)_table_", "", target))
        if owner == target:
            return self.names[owner]
        part = target[len(owner) :].strip("_")
        part = re.sub(r"_region$", "", part)
        if part in PLAIN_PARTS or not part:
            return self.names[owner]
        return f"{_words(part)} of the {self.names[owner]}"


def _drawer_words(part: str) -> str:
    return f"{part} drawer" if part in ("top", "middle", "bottom") else part


def object_display_names(names: list[str]) -> dict[str, str]:
    """LIBERO instance names -> words, numbered only where a kind repeats (module docstring)."""
    kinds = {name: re.sub(r"_\d+$", "", name) for name in names}
    counts = Counter(kinds.values())
    return {name: _words(name if counts[kind] > 1 else kind) for name, kind in kinds.items()}


def _words(name: str) -> str:
    return name.replace("_", " ").strip()
