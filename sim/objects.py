"""The objects of our table-top scenes, built from MuJoCo primitives through robosuite's models.

Primitives (boxes, cylinders) rather than meshes: they render several times faster on a CPU,
their bounding boxes are exact, and their colours can be changed per episode through
`model.geom_rgba` without recompiling the scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from robosuite.models.objects import BoxObject, CompositeObject, CylinderObject, MujocoObject

# Named colours an instruction can refer to (RGBA). Receptacles take muted colours.
COLORS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.12, 0.10, 1.0),
    "blue": (0.12, 0.30, 0.85, 1.0),
    "green": (0.15, 0.65, 0.20, 1.0),
    "yellow": (0.95, 0.80, 0.10, 1.0),
    "purple": (0.55, 0.20, 0.70, 1.0),
    "orange": (0.95, 0.50, 0.10, 1.0),
}
RECEPTACLE_COLORS: dict[str, tuple[float, float, float, float]] = {
    "white": (0.92, 0.92, 0.90, 1.0),
    "grey": (0.55, 0.55, 0.58, 1.0),
    "brown": (0.50, 0.33, 0.20, 1.0),
    "beige": (0.85, 0.78, 0.62, 1.0),
    "teal": (0.20, 0.50, 0.50, 1.0),
}

CUBE_HALF_SIZE = 0.02
CYLINDER_RADIUS, CYLINDER_HALF_HEIGHT = 0.02, 0.025


@dataclass(frozen=True)
class ObjectSpec:
    """One object of a scene. `kind` is cube, cylinder, plate, bowl or basket; `color` names a
    COLORS entry for objects an instruction names, or None to draw one per episode."""

    name: str  # e.g. "red cube", "bowl": the words an instruction and the labels use
    kind: str
    color: str | None = None

    @property
    def is_receptacle(self) -> bool:
        return self.kind in RECEPTACLE_KINDS

    @property
    def model_name(self) -> str:
        return self.name.replace(" ", "_")


@dataclass(frozen=True)
class ReceptacleGeometry:
    """Where something placed on or in a receptacle rests: footprint half-extent and floor height."""

    half_extent: tuple[float, float]  # (x, y) of the usable area around the centre
    floor_height: float  # height of the resting surface above the receptacle's base
    wall_height: float  # 0 for a plate
    footprint_radius: float  # for placement: keep other objects this far from its centre


RECEPTACLE_KINDS: dict[str, ReceptacleGeometry] = {
    "plate": ReceptacleGeometry((0.055, 0.055), 0.012, 0.0, 0.085),
    "bowl": ReceptacleGeometry((0.045, 0.045), 0.010, 0.045, 0.075),
    "basket": ReceptacleGeometry((0.075, 0.055), 0.010, 0.055, 0.11),
}
GRASPABLE_KINDS = ("cube", "cylinder")


def footprint_radius(kind: str) -> float:
    if kind in RECEPTACLE_KINDS:
        return RECEPTACLE_KINDS[kind].footprint_radius
    return 0.035


def half_height(kind: str) -> float:
    """Height of an object's centre above the table when it rests upright."""
    return {
        "cube": CUBE_HALF_SIZE,
        "cylinder": CYLINDER_HALF_HEIGHT,
        "plate": 0.006,
        "bowl": 0.0275,
        "basket": 0.0325,
    }[kind]


def build_object(spec: ObjectSpec) -> MujocoObject:
    """The robosuite model of one object (colours are set per episode, not here)."""
    name = spec.model_name
    grey = [0.5, 0.5, 0.5, 1.0]
    if spec.kind == "cube":
        return BoxObject(
            name=name,
            size=[CUBE_HALF_SIZE] * 3,
            rgba=grey,
            density=400,
            friction=(1.5, 0.01, 0.001),
        )
    if spec.kind == "cylinder":
        return CylinderObject(
            name=name,
            size=[CYLINDER_RADIUS, CYLINDER_HALF_HEIGHT],
            rgba=grey,
            density=400,
            friction=(1.5, 0.01, 0.001),
        )
    if spec.kind == "plate":
        return CylinderObject(name=name, size=[0.075, 0.006], rgba=grey, density=2000)
    if spec.kind == "bowl":
        return _ring_container(name, radius=0.06, wall_height=0.045, segments=14)
    if spec.kind == "basket":
        return _box_container(name, half_x=0.085, half_y=0.065, wall_height=0.055)
    raise ValueError(
        f"unknown object kind {spec.kind!r}; expected one of cube, cylinder, plate, bowl, basket"
    )


def _ring_container(name: str, radius: float, wall_height: float, segments: int) -> CompositeObject:
    """A bowl: a disc with a ring of thin boxes standing on its rim."""
    thickness, base = 0.006, 0.005
    half_height_total = (wall_height + base) / 2
    types, sizes, locations, quats = (
        ["cylinder"],
        [[radius + thickness, base / 2]],
        [[0, 0, -half_height_total + base / 2]],
        [None],
    )
    segment_half_length = radius * np.tan(np.pi / segments) + thickness / 2
    for index in range(segments):
        angle = 2 * np.pi * index / segments
        types.append("box")
        sizes.append([thickness / 2, segment_half_length, wall_height / 2])
        locations.append(
            [
                radius * np.cos(angle),
                radius * np.sin(angle),
                -half_height_total + base + wall_height / 2,
            ]
        )
        quats.append([np.cos(angle / 2), 0, 0, np.sin(angle / 2)])
    return CompositeObject(
        name=name,
        total_size=[radius + thickness, radius + thickness, half_height_total],
        geom_types=types,
        geom_sizes=sizes,
        geom_locations=locations,
        geom_quats=quats,
        locations_relative_to_center=True,
        rgba=[0.5, 0.5, 0.5, 1.0],
        density=1500,
    )


def _box_container(name: str, half_x: float, half_y: float, wall_height: float) -> CompositeObject:
    """A basket: a floor and four walls."""
    thickness, base = 0.006, 0.005
    half_height_total = (wall_height + base) / 2
    wall_z = -half_height_total + base + wall_height / 2
    types = ["box"] * 5
    sizes = [
        [half_x, half_y, base / 2],
        [thickness / 2, half_y, wall_height / 2],
        [thickness / 2, half_y, wall_height / 2],
        [half_x, thickness / 2, wall_height / 2],
        [half_x, thickness / 2, wall_height / 2],
    ]
    locations = [
        [0, 0, -half_height_total + base / 2],
        [half_x - thickness / 2, 0, wall_z],
        [-half_x + thickness / 2, 0, wall_z],
        [0, half_y - thickness / 2, wall_z],
        [0, -half_y + thickness / 2, wall_z],
    ]
    return CompositeObject(
        name=name,
        total_size=[half_x, half_y, half_height_total],
        geom_types=types,
        geom_sizes=sizes,
        geom_locations=locations,
        locations_relative_to_center=True,
        rgba=[0.5, 0.5, 0.5, 1.0],
        density=1500,
    )
