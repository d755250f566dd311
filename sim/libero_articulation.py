"""Operating LIBERO's articulated fixtures for the scripted expert: push a drawer or a microwave
door closed, turn a stove's knob on.

One mechanism serves all three. An operation holds the hand at a point attached to the joint's
moving body (the drawer, the door, the knob) and moves that point as the joint would move it,
a little ahead of where the joint is now:

- **push** (close a drawer or a door): the fingers, closed, stand just outside the body's face
  that leads away from the motion (a drawer's front with its handle; a door's outer face, 3/4 of
  the way from the hinge to its edge), and follow that face towards the closed position;
- **turn** (a stove's knob): the fingers grasp the knob's fin (its tallest part) across its
  thin side, and the hand turns about the knob's axis with it.

The point is expressed in the moving body's frame when each attempt starts, so it follows the
body; each step's target is that point moved by the joint from its current value by at most a
lead (3 cm along a slide, the matching angle on a hinge), towards the value to reach: the joint's
limit for "close" (LIBERO calls a drawer closed only within 5 mm of it), 0.4 rad past the
threshold for "turnon". Success is LIBERO's own predicate on the fixture's state.

Opening (pulling a drawer by its handle, swinging a door open) needs a handle grasp that this
module does not have: such goals stay `UnsupportedGoalError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mujoco
import numpy as np

from sim.tasks import JointStep

CHANGES = ("close", "turnon")  # the predicates an operation can make true
TURN_PAST_THRESHOLD = 0.4  # rad: a knob is turned this far past LIBERO's "on" threshold
SLIDE_LEAD = 0.06  # m: how far ahead of the joint the hand's target runs on a slide
MAX_HINGE_LEAD = 0.35  # rad: the same on a hinge, at most
PUSH_STANDOFF = 0.045  # m: the closed hand's centre waits this far off the face it will push
PUSH_CONTACT = 0.012  # m: and pushes from this far (the fingers' half thickness)
DOOR_PUSH_RADIUS = 0.75  # a door is pushed this fraction of the way from its hinge to its edge
# rad: a drawer is pushed with the fingertips leaning this far towards it, which keeps the
# forearm off the cabinet above the drawer. Measured on libero_10's bottom-drawer task: over init
# states 0-2, 12° closed none (the forearm met the cabinet 2-5 cm short) and 40° two; 50° closed
# 4 of init states 0-4.
DRAWER_PUSH_LEAN = np.radians(50.0)
NEAR_PUSH = 0.04  # m: a door's face is read from its boxes' corners this close (radially)
FIN_GRIP_DEPTH = 0.012  # m: a knob's fin is gripped this far below its top


@dataclass(frozen=True)
class Operation:
    """One attempt at a JointStep, planned when it starts (module docstring).

    `attach` (3,) is where the grip site goes, in the moving body's frame; `heading` the
    fingers' axis (radians, in the table plane); `grips` whether the fingers close on the body
    (turn) or push it closed-fisted; `standoff` (3,) the world offset of the waiting pose from
    the attach point."""

    joint: int
    body: int
    goal: float  # joint value to drive towards
    attach: np.ndarray
    heading: float
    grips: bool
    standoff: np.ndarray
    start_value: float  # the joint's value when the fingers engaged (a knob's turn is relative)
    lean: np.ndarray  # axis-angle (3,) the hand leans by, fingertips first (0 for none)


class Articulation:
    """The joints of one LIBERO scene's fixtures, as the expert operates them."""

    def __init__(self, task_env: Any) -> None:
        self.task_env = task_env
        self._model = task_env.sim.model._model
        self._data = task_env.sim.data._data
        self._body_geoms: dict[int, list[int]] = {}  # `_geoms`' cache: model constants

    # ------------------------------------------------------------------ the goal
    def joint_of(self, step: JointStep) -> int:
        """The one joint `step.target` names; a fixture with several (a whole cabinet) is not
        one operation."""
        if step.change not in CHANGES:
            raise ValueError(f"no operation makes {step.change!r} true; expected one of {CHANGES}")
        names = self._joint_names(step.target)
        if len(names) != 1:
            raise ValueError(
                f"{step.target!r} has {len(names)} joints ({names}); an operation moves one"
            )
        return mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_JOINT, names[0])

    def holds(self, step: JointStep) -> bool:
        """LIBERO's own predicate `step.change` on `step.target`, as its success check reads it."""
        state = self.task_env.object_states_dict[step.target]
        return bool(state.is_close() if step.change == "close" else state.turn_on())

    def goal_value(self, step: JointStep, joint: int) -> float:
        """Joint value to drive to: its limit on the closed side, or past the knob's threshold."""
        low, high = self._model.jnt_range[joint]
        properties = self._fixture(step.target).object_properties["articulation"]
        if step.change == "turnon":
            return float(min(properties["default_turnon_ranges"]) + TURN_PAST_THRESHOLD)
        closed = np.mean(properties["default_close_ranges"])
        return float(high if closed > self.value(joint) else low)

    def value(self, joint: int) -> float:
        return float(self._data.qpos[self._model.jnt_qposadr[joint]])

    def opening_direction(self, target: str) -> np.ndarray | None:
        """The horizontal unit vector (3,) a drawer region moves along as it opens; None for
        a target that is not a region on one slide joint (a plate, a basket, a door)."""
        site = self.task_env.object_sites_dict.get(target)
        names = list(getattr(site, "joints", None) or [])
        if len(names) != 1:
            return None
        joint = mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_JOINT, names[0])
        if self._model.jnt_type[joint] != mujoco.mjtJoint.mjJNT_SLIDE:
            return None
        ranges = self._fixture(target).object_properties["articulation"]
        sign = np.sign(
            np.mean(ranges["default_open_ranges"]) - np.mean(ranges["default_close_ranges"])
        )
        axis = self._axis(joint)[0]
        return _unit(sign * np.array([axis[0], axis[1], 0.0]))

    # ------------------------------------------------------------------ planning an attempt
    def plan(self, step: JointStep) -> Operation:
        joint = self.joint_of(step)
        body = int(self._model.jnt_bodyid[joint])
        goal = self.goal_value(step, joint)
        centres, halves = self._boxes(body)
        if step.change == "turnon":
            return self._plan_turn(joint, body, goal, centres, halves)
        return self._plan_push(joint, body, goal, centres, halves)

    def _plan_push(
        self, joint: int, body: int, goal: float, centres: np.ndarray, halves: np.ndarray
    ) -> Operation:
        """Closed fingers just outside the face that leads away from the motion."""
        axis, anchor = self._axis(joint)
        sign = 1.0 if goal > self.value(joint) else -1.0
        corners = _box_corners(centres, halves)  # (8G, 3)
        if self._model.jnt_type[joint] == mujoco.mjtJoint.mjJNT_SLIDE:
            motion = sign * axis
            trailing = int(np.argmin(centres @ motion))  # the handle: farthest out of the face
            point = centres[trailing].copy()
        else:  # a hinge: push at DOOR_PUSH_RADIUS of the way to the door's far edge
            radial = corners - anchor
            radial -= np.outer(radial @ axis, axis)
            far = corners[int(np.argmax(np.linalg.norm(radial, axis=1)))]
            point = anchor + DOOR_PUSH_RADIUS * (far - anchor)
            point -= ((point - anchor) @ axis) * axis  # on the hinge's foot ...
            point += (centres.mean(axis=0) - anchor) @ axis * axis  # ... at the door's middle
            motion = sign * np.cross(axis, point - anchor)
        motion = _unit(np.array([motion[0], motion[1], 0.0]))
        if self._model.jnt_type[joint] != mujoco.mjtJoint.mjJNT_SLIDE:
            # the door's face where it is pushed, not its handle's far out at the edge
            corners = corners[
                np.abs(_radius(corners, axis, anchor) - _radius(point[None], axis, anchor))
                < NEAR_PUSH
            ]
        face = float(((corners - point) @ motion).min())  # how far behind the point the face is
        contact = point + (face - PUSH_CONTACT) * motion
        return Operation(
            joint=joint,
            body=body,
            goal=goal,
            attach=self._to_body(body, contact),
            heading=float(np.arctan2(motion[0], -motion[1])),  # fingers along the face
            grips=False,
            standoff=-(PUSH_STANDOFF - PUSH_CONTACT) * motion,
            start_value=self.value(joint),
            lean=DRAWER_PUSH_LEAN * _unit(np.cross(motion, [0.0, 0.0, 1.0]))
            if self._model.jnt_type[joint] == mujoco.mjtJoint.mjJNT_SLIDE
            else np.zeros(3),
        )

    def _plan_turn(
        self, joint: int, body: int, goal: float, centres: np.ndarray, halves: np.ndarray
    ) -> Operation:
        """Grip the fin (the body's box with the highest top) across its thin side."""
        fin = int(np.argmax(centres[:, 2] + halves[:, 2]))
        grip = centres[fin].copy()
        grip[2] = max(centres[fin, 2], centres[fin, 2] + halves[fin, 2] - FIN_GRIP_DEPTH)
        heading = self._thin_side_heading(self._geoms(body)[fin])
        return Operation(
            joint=joint,
            body=body,
            goal=goal,
            attach=self._to_body(body, grip),
            heading=heading,
            grips=True,
            standoff=np.zeros(3),
            start_value=self.value(joint),
            lean=np.zeros(3),
        )

    # ------------------------------------------------------------------ following the joint
    def attach_point(self, operation: Operation) -> np.ndarray:
        """The attach point (3,) in the world, where the body is now."""
        rotation = self._data.xmat[operation.body].reshape(3, 3)
        return self._data.xpos[operation.body] + rotation @ operation.attach

    def lead_target(self, operation: Operation) -> tuple[np.ndarray, float]:
        """Where the grip site should be this step (3,): the attach point moved by the joint
        from its current value towards the goal by at most the lead; and the angle (rad) the
        hand should have turned by since the fingers engaged (a knob's turn; 0 for a push)."""
        joint, point = operation.joint, self.attach_point(operation)
        now = self.value(joint)
        axis, anchor = self._axis(joint)
        if self._model.jnt_type[joint] == mujoco.mjtJoint.mjJNT_SLIDE:
            step = float(np.clip(operation.goal - now, -SLIDE_LEAD, SLIDE_LEAD))
            return point + step * axis, 0.0
        radius = float(_radius(point[None], axis, anchor)[0])
        lead = min(MAX_HINGE_LEAD, SLIDE_LEAD / max(radius, 1e-3))
        step = float(np.clip(operation.goal - now, -lead, lead))
        moved = anchor + rotation_about(axis, step) @ (point - anchor)
        turned = (now + step - operation.start_value) if operation.grips else 0.0
        return moved, turned

    def turn_axis(self, operation: Operation) -> np.ndarray:
        return self._axis(operation.joint)[0]

    def top_of(self, step: JointStep) -> float:
        """The highest point of the fixture that owns the joint (the hand passes above it)."""
        body = self._fixture_body(step.target)
        from sim.libero_expert import subtree_bodies

        tops = []
        for child in subtree_bodies(self._model, body):
            if self._geoms(child):
                centres, halves = self._boxes(child)
                tops.append(float((centres[:, 2] + halves[:, 2]).max()))
        return max(tops)

    # ------------------------------------------------------------------ geometry
    def _geoms(self, body: int) -> list[int]:
        """The body's colliding geoms (cached: the approach asks every step)."""
        if body not in self._body_geoms:
            self._body_geoms[body] = [
                geom
                for geom in range(self._model.ngeom)
                if self._model.geom_bodyid[geom] == body
                and (self._model.geom_contype[geom] or self._model.geom_conaffinity[geom])
            ]
        return self._body_geoms[body]

    def _boxes(self, body: int) -> tuple[np.ndarray, np.ndarray]:
        """World centres (G, 3) and half sizes (G, 3) of the body's colliding geoms, posed."""
        geoms = np.array(self._geoms(body), dtype=int)
        if not len(geoms):
            name = self._model.body(body).name
            raise RuntimeError(f"LIBERO body {name!r} has no collision geoms to push or grip")
        return posed_geom_boxes(self._model, self._data, geoms)

    def _thin_side_heading(self, geom: int) -> float:
        """Heading across the geom's thinner horizontal side: the fingers close across it."""
        rotation = self._data.geom_xmat[geom].reshape(3, 3)
        half = self._model.geom_aabb[geom, 3:]
        horizontal = [(half[k], rotation[:, k]) for k in range(3) if abs(rotation[2, k]) < 0.7]
        _, thin_axis = min(horizontal, key=lambda pair: pair[0])
        return float(np.arctan2(thin_axis[1], thin_axis[0]))

    def _axis(self, joint: int) -> tuple[np.ndarray, np.ndarray]:
        """The joint's world axis (3,) and anchor (3,)."""
        return np.array(self._data.xaxis[joint]), np.array(self._data.xanchor[joint])

    def _to_body(self, body: int, point: np.ndarray) -> np.ndarray:
        rotation = self._data.xmat[body].reshape(3, 3)
        return rotation.T @ (point - self._data.xpos[body])

    def _owner(self, target: str) -> str:
        """The fixture a target is, or whose region it is."""
        site = self.task_env.object_sites_dict.get(target)
        return getattr(site, "parent_name", None) or target

    def _fixture(self, target: str) -> Any:
        return self.task_env.get_object(self._owner(target))

    def _fixture_body(self, target: str) -> int:
        return int(self.task_env.obj_body_id[self._owner(target)])

    def _joint_names(self, target: str) -> list[str]:
        site = self.task_env.object_sites_dict.get(target)
        if site is not None and getattr(site, "joints", None) is not None:
            return list(site.joints)
        return list(getattr(self.task_env.get_object(target), "joints", []))


def posed_geom_boxes(
    model: mujoco.MjModel, data: mujoco.MjData, geoms: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """World centres (G, 3) and half sizes (G, 3) of the axis-aligned boxes around `geoms`
    (G,) as posed now: each geom's own bounding box (`geom_aabb`) turned by its frame."""
    rotation = data.geom_xmat[geoms].reshape(-1, 3, 3)
    centre = data.geom_xpos[geoms] + np.einsum("gij,gj->gi", rotation, model.geom_aabb[geoms, :3])
    half = np.einsum("gij,gj->gi", np.abs(rotation), model.geom_aabb[geoms, 3:])
    return centre, half


def _box_corners(centres: np.ndarray, halves: np.ndarray) -> np.ndarray:
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=float)
    return (centres[:, None, :] + signs[None] * halves[:, None, :]).reshape(-1, 3)


def _radius(points: np.ndarray, axis: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """Distances (N,) of points (N, 3) from the line through `anchor` along `axis`."""
    return np.linalg.norm(np.cross(axis, points - anchor), axis=1)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-9)


def rotation_about(axis: np.ndarray, angle: float) -> np.ndarray:
    """The rotation (3, 3) by `angle` radians about `axis` (Rodrigues)."""
    x, y, z = _unit(axis)
    cross = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
