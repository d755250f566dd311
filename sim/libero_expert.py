"""The scripted expert's world on real LIBERO: its goal from the task's BDDL, geometry from meshes.

`LiberoWorld` answers `sim.expert.ExpertWorld` for a `LiberoEnv`, so the same phase machine that
solves our table-top suites (approach, descend, grasp, lift, carry, lower, release, retreat)
solves LIBERO's pick-and-place tasks. Everything it reads is privileged simulator state, used only
to choose actions.

Why geometry from the collision meshes and not from a table of object sizes: LIBERO has ~60
object models (cans, cartons, bowls, boxes, bottles) whose origins sit anywhere in their meshes,
and a hand-kept table would drift from the package. Each object's box is measured every step from
MuJoCo's per-geom bounding boxes (`geom_aabb`, posed by the geom's current frame):

- **where to grasp**: an object narrower than the open gripper is grasped at its centre, a few
  centimetres below its top (the fingers are ~4 cm long); a wider one (a bowl) by its rim, the
  fingers across the wall, the hand leaning away from the robot when the rim is far from its base;
  one that is wide only by a handle or a spout (a moka pot) by its body (`grasp_extent`), the
  fingers closing clear of the handle;
- **which way to turn**: each attempt ranks the headings the object allows (across its shorter
  side and up to 45° off it for a box, 30° for a square or round footprint; every 30° round a
  bowl's rim) by how far the hand, then the fingers, stay from every other collision box (a
  neighbouring can, a cabinet's edge), then by how little they turn (for a rim: how close to the
  side facing the robot's base, the most reachable);
- **how high to carry and where to let go**: the held object's bottom clears every other movable
  object and the target's top; it is let go with its centre over the target's centre (or over the
  BDDL region's site, e.g. a basket's contain region) and its bottom just above the target's top,
  both read from the object as it hangs in the fingers. Objects that share an "on" region go
  side by side in it; one put into an open drawer goes over the part that is out of the cabinet.

Goals (`goal_steps`): each `(In obj region)` or `(On obj target)` of the BDDL goal is one
`PlaceStep`; each `(Close x)` or `(TurnOn x)` one `JointStep` (sim/libero_articulation.py), unless
it holds already (a stove left on). Steps run in goal order, except that turning on comes first
and closing last: "put the bowl in the bottom drawer and close it" lists the close first, yet the
bowl must go in while the drawer is open. Opening has no primitive yet, nor does placing into a
drawer that starts closed; such a task fails with an error that names the predicate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import mujoco
import numpy as np

from sim.expert import turned_about_vertical
from sim.libero_articulation import (
    CHANGES,
    Articulation,
    Operation,
    posed_geom_boxes,
    rotation_about,
)
from sim.libero_env import LiberoEnv
from sim.tasks import JointStep, PlaceStep

GRIPPER_OPENING = 0.075  # m: widest object the Panda's open fingers straddle with some margin
FINGER_DEPTH = 0.03  # m: how far below an object's top the grip site closes
RIM_GRIP_DEPTH = 0.012  # m: the same for a bowl's rim
# Rim grasps farther than TILT_FROM (m, horizontally) from the robot's base lean the hand up to
# MAX_REACH_TILT degrees, reached TILT_SPAN further out.
TILT_FROM, TILT_SPAN, MAX_REACH_TILT = 0.74, 0.06, 20.0
RIM_INSET = 0.012  # m: grip this far inside a wide object's outer edge (across its wall)
LIFT_CLEARANCE = 0.05  # m: the held object's bottom above every other object's top while carried
# m: the least lift of the held object's bottom; a bowl hanging from its rim tilts, its far side
# lower than its resting bottom would suggest
MIN_LIFT = 0.08
RELEASE_CLEARANCE = 0.015  # m: the held object's bottom above the target's top when let go
SHARED_REGION_SPREAD = 0.6  # of a region's half size: how far apart objects sharing it go
DRAWER_FRONT_SHIFT = 0.04  # m: objects go into an open drawer this far out from its centre
PATH_MARGIN = 0.08  # m: objects this close to the hand's straight path count as obstacles
CORE_HEIGHT = 0.6  # of an object's height: its geoms this tall are its body (`grasp_extent`)
SQUARE_ASPECT = 1.25  # footprints closer to square than this are turned modulo 90°


CLEAR_ENOUGH = 0.015  # m: a grasp whose hand clears everything by this much is as good as any
HAND_HALF_SIZE = (0.11, 0.035)  # m: the Panda hand's footprint about the grip site (along, across)
FINGERS_HALF_SIZE = (0.055, 0.012)  # m: the open fingers' footprint
HAND_HEIGHT = 0.045  # m: the hand's body starts this far above the grip site
ROBOT_BODY_PREFIXES = ("robot0_", "gripper0_", "mount0_")


@dataclass(frozen=True)
class GraspPlan:
    """One grasp: the fingers' axis heading (radians, in the table plane), the grip point's offset
    (2,) from the object's centre, and the grip site's depth below the object's top."""

    heading: float
    offset: np.ndarray
    depth: float


class UnsupportedGoalError(NotImplementedError):
    """A BDDL goal predicate the scripted expert has no primitive for."""


@dataclass(frozen=True)
class Extent:
    """An object's axis-aligned box in the world (3,) and its footprint in its own frame."""

    low: np.ndarray
    high: np.ndarray
    local_size: tuple[float, float]  # (x, y) extent in the body frame, metres
    yaw: float  # the body frame's heading, radians

    @property
    def centre(self) -> np.ndarray:
        return (self.low + self.high) / 2


class LiberoWorld:
    """`ExpertWorld` of one LIBERO task (module docstring)."""

    # The fingers start 8 cm apart and close ~1 cm a step; a bowl's wall is pinched only when
    # both reach it, which 8 steps (enough for our cubes) sometimes miss.
    grasp_steps = 12

    def __init__(self, env: LiberoEnv) -> None:
        self.env = env
        self.task_env: Any = env.libero_env.env  # the robosuite task env (BDDLBaseDomain)
        self._model = self.task_env.sim.model._model
        self._data = self.task_env.sim.data._data
        self.articulation = Articulation(self.task_env)
        self._steps = tuple(goal_steps(self.task_env.parsed_problem["goal_state"], self.task_env))
        self._geoms = {name: self._collision_geoms(name) for name in self.task_env.objects_dict}
        robot_bodies = {
            body
            for body in range(self._model.nbody)
            if self._model.body(body).name.startswith(ROBOT_BODY_PREFIXES)
        }
        self._scene_geoms = [  # what the hand may hit: an infinite floor plane has no box
            geom
            for geom in range(self._model.ngeom)
            if self._collides(geom)
            and self._model.geom_bodyid[geom] not in robot_bodies
            and self._model.geom_type[geom] != mujoco.mjtGeom.mjGEOM_PLANE
        ]
        self._extent_time, self._extents = -1.0, {}  # `extent`'s cache: sim time, boxes
        self._plans: dict[str, GraspPlan] = {}  # the grasp of each object's current attempt
        self._grip_offset: dict[str, float] = {}  # grip-site height above the object's bottom
        self._rest_bottom: dict[str, float] = {}  # the object's bottom before it was picked
        self._operations: dict[JointStep, Operation] = {}  # each JointStep's current attempt

    @property
    def steps(self) -> Sequence[PlaceStep | JointStep]:
        return self._steps

    # ------------------------------------------------------------------ the robot
    def eef_position(self) -> np.ndarray:
        robot = self.task_env.robots[0]
        return np.array(self._data.site_xpos[robot.eef_site_id])

    def eef_quaternion(self) -> np.ndarray:
        from robosuite.utils import transform_utils

        robot = self.task_env.robots[0]
        body = self._model.body(robot.robot_model.eef_name).id
        return transform_utils.convert_quat(np.array(self._data.xquat[body]), to="xyzw")

    # ------------------------------------------------------------------ ExpertWorld
    def approach_position(self, obj: str, hover: float) -> np.ndarray:
        grasp = self.grasp_position(obj)
        path = (self.eef_position()[:2], grasp[:2])
        above_others = self._tallest_top_along(path, obj) + LIFT_CLEARANCE + FINGER_DEPTH
        return np.array([grasp[0], grasp[1], max(grasp[2] + hover, above_others)])

    def grasp_position(self, obj: str) -> np.ndarray:
        plan = self._plans.get(obj) or self._plan_grasp(obj)
        extent = self.grasp_extent(obj)
        point = extent.centre.copy()
        point[:2] += plan.offset
        point[2] = max(
            extent.low[2] + min(0.012, (extent.high[2] - extent.low[2]) / 2),
            extent.high[2] - plan.depth,
        )
        # Measured while the object rests (approach and descent), read while it is carried.
        self._grip_offset[obj] = float(point[2] - extent.low[2])
        self._rest_bottom[obj] = float(extent.low[2])
        return point

    def grasp_rotation(self, obj: str, reference: np.ndarray) -> np.ndarray:
        """Called as each grasp attempt starts: plans it afresh (the object may have moved)."""
        plan = self._plan_grasp(obj)
        turned = turned_about_vertical(reference, plan.heading, np.pi)  # the hand is symmetric
        extent = self.grasp_extent(obj)
        point = extent.centre[:2] + plan.offset
        towards = self._towards_robot(point)
        reach = float(np.linalg.norm(self._base_xy() - point))
        tilt = np.radians(MAX_REACH_TILT) * np.clip((reach - TILT_FROM) / TILT_SPAN, 0.0, 1.0)
        if tilt == 0.0 or min(extent.local_size) <= GRIPPER_OPENING:
            return turned
        # A rim far from the base: the fingertips lean away from the robot, as an arm reaching
        # far does, so the elbow is not pushed to its limit; the fingers still meet the wall.
        return rotation_about(np.array([towards[1], -towards[0], 0.0]), -tilt) @ turned

    def _plan_grasp(self, obj: str) -> GraspPlan:
        """The clearest of the grasps `obj` allows (module docstring); cached for the attempt."""
        extent = self.grasp_extent(obj)
        size_x, size_y = extent.local_size
        candidates: list[tuple[GraspPlan, float]] = []  # (plan, preference: lower is better)
        if min(size_x, size_y) > GRIPPER_OPENING:  # by the rim: fingers across the wall
            radius = min(size_x, size_y) / 2 - RIM_INSET
            towards = self._towards_robot(extent.centre)
            facing = float(np.arctan2(towards[1], towards[0]))
            for angle in facing + np.radians(np.arange(0, 360, 30)):
                offset = radius * np.array([np.cos(angle), np.sin(angle)])
                candidates.append((GraspPlan(angle, offset, RIM_GRIP_DEPTH), _turn(angle, facing)))
        else:  # across the shorter side, or up to a few tens of degrees off it
            # the whole object's side: a moka pot's fingers close clear of its handle and spout
            size_x, size_y = self.extent(obj).local_size
            across = extent.yaw if size_x <= size_y else extent.yaw + np.pi / 2
            square = max(size_x, size_y) / max(min(size_x, size_y), 1e-6) < SQUARE_ASPECT
            for degrees in (0, 15, -15, 30, -30) + (() if square else (45, -45)):
                heading = across + np.radians(degrees)
                candidates.append((GraspPlan(heading, np.zeros(2), FINGER_DEPTH), abs(degrees)))
        grip_z = extent.high[2] - candidates[0][0].depth
        obstacles = self._obstacle_boxes(obj)
        scored = []
        for index, (plan, preference) in enumerate(candidates):
            hand, fingers = self._clearance(
                extent.centre[:2] + plan.offset, plan.heading, grip_z, obstacles
            )
            # The hand first: it is what gets stuck on a cabinet's edge; fingers may brush a wall.
            scored.append(
                (-min(hand, CLEAR_ENOUGH), -min(fingers, CLEAR_ENOUGH), preference, index)
            )
        plan = candidates[min(scored)[-1]][0]
        self._plans[obj] = plan
        return plan

    def _obstacle_boxes(self, obj: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World boxes of every colliding geom but the robot's and `obj`'s: centres (M, 3),
        half sizes (M, 3), as `extent` poses them."""
        own = set(self._geoms[obj])
        return self._posed_boxes(
            np.array([g for g in self._scene_geoms if g not in own], dtype=int)
        )

    def _posed_boxes(self, geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World boxes of `geoms` (M,) as `extent` poses them: centres (M, 3), half sizes
        (M, 3), and the geoms."""
        centre, half = posed_geom_boxes(self._model, self._data, geoms)
        return centre, half, geoms

    @staticmethod
    def _clearance(
        point: np.ndarray, heading: float, grip_z: float, obstacles: tuple[np.ndarray, ...]
    ) -> tuple[float, float]:
        """Least gaps (m, negative = overlap) in the table plane of the hand and of the fingers,
        closed at `point` (2,) with their axis at `heading`, to the obstacles tall enough to
        reach them: the fingers hang to ~1 cm below the grip site, the hand's body starts
        HAND_HEIGHT above it."""
        centre, half, _ = obstacles
        axis = np.array([np.cos(heading), np.sin(heading)])
        normal = np.array([-axis[1], axis[0]])
        gaps = []
        for (along, across), bottom in (
            (HAND_HALF_SIZE, grip_z + HAND_HEIGHT),
            (FINGERS_HALF_SIZE, grip_z - 0.01),
        ):
            tall = centre[:, 2] + half[:, 2] > bottom
            if not tall.any():
                gaps.append(np.inf)
                continue
            u, v = np.meshgrid(np.linspace(-along, along, 9), np.linspace(-across, across, 3))
            points = point + u.reshape(-1, 1) * axis + v.reshape(-1, 1) * normal  # (P, 2)
            offset = np.abs(points[:, None, :] - centre[None, tall, :2]) - half[None, tall, :2]
            outside = np.linalg.norm(np.maximum(offset, 0.0), axis=-1)
            inside = np.minimum(offset.max(axis=-1), 0.0)
            gaps.append(float((outside + inside).min()))
        return gaps[0], gaps[1]

    def carry_height(self, step: PlaceStep) -> float:
        path = (self.eef_position()[:2], self._target_xy(step))
        bottom = max(
            self._tallest_top_along(path, step.obj) + LIFT_CLEARANCE,
            self._target_top(step) + LIFT_CLEARANCE,
            self._rest_bottom.get(step.obj, -np.inf) + MIN_LIFT,
        )
        return bottom + self._grip_offset.get(step.obj, FINGER_DEPTH)

    def release_position(self, step: PlaceStep) -> np.ndarray:
        """Where the grip site must be for the held object's centre to sit over the target, its
        bottom just above the target's top. Read from the object as it hangs now: a bowl held by
        its rim hangs off-centre and tilted, so its grip offsets are not the resting ones."""
        eef, held = self.eef_position(), self.extent(step.obj)
        xy = self._target_xy(step) + (eef[:2] - held.centre[:2])
        z = self._target_top(step) + RELEASE_CLEARANCE + (eef[2] - held.low[2])
        return np.array([xy[0], xy[1], z])

    def holding(self, step: PlaceStep) -> bool:
        rest = self._rest_bottom.get(step.obj)
        lifted = rest is not None and self.extent(step.obj).low[2] > rest + 0.02
        return lifted and self._touching(step.obj)

    # ------------------------------------------------------------------ operating a joint
    def plan_operation(self, step: JointStep, reference: np.ndarray) -> np.ndarray:
        """Called as each attempt at `step` starts: plans it afresh (sim/libero_articulation.py)
        and returns the hand's orientation (3, 3) for it: `reference` turned so the fingers
        lie along the face to push, or across the fin to grip."""
        operation = self.articulation.plan(step)
        self._operations[step] = operation
        turned = turned_about_vertical(reference, operation.heading, np.pi)
        angle = float(np.linalg.norm(operation.lean))
        return turned if angle == 0 else rotation_about(operation.lean, angle) @ turned

    def operation_grips(self, step: JointStep) -> bool:
        return self._operations[step].grips

    def operation_approach(self, step: JointStep, hover: float) -> np.ndarray:
        """Above the waiting pose, and above the fixture and the objects on the way there."""
        start = self.operation_start(step)
        path = (self.eef_position()[:2], start[:2])
        above = max(
            self.articulation.top_of(step) + LIFT_CLEARANCE,
            self._tallest_top_along(path, "") + LIFT_CLEARANCE + FINGER_DEPTH,
        )
        return np.array([start[0], start[1], max(start[2] + hover, above)])

    def operation_start(self, step: JointStep) -> np.ndarray:
        """The waiting pose: beside the face to push (or on the fin to grip)."""
        operation = self._operations[step]
        return self.articulation.attach_point(operation) + operation.standoff

    def operation_target(self, step: JointStep) -> tuple[np.ndarray, float]:
        """This step's grip-site target and the turn (rad) about the joint's axis since the
        fingers engaged (`Articulation.lead_target`)."""
        return self.articulation.lead_target(self._operations[step])

    def operation_rotation(self, step: JointStep, engaged: np.ndarray, turned: float) -> np.ndarray:
        """The hand's orientation `engaged` (3, 3) turned by `turned` about the joint's axis."""
        axis = self.articulation.turn_axis(self._operations[step])
        return rotation_about(axis, turned) @ engaged

    def engage(self, step: JointStep) -> None:
        """The fingers are on the body: a turn counts from the joint's value now."""
        operation = self._operations[step]
        value = self.articulation.value(operation.joint)
        self._operations[step] = replace(operation, start_value=value)

    def operated(self, step: JointStep) -> bool:
        return self.articulation.holds(step)

    # ------------------------------------------------------------------ geometry
    def extent(self, name: str) -> Extent:
        """`name`'s box from its collision geoms' posed bounding boxes (module docstring).

        Cached per simulator time: one expert step asks for the same boxes many times (the grasp
        point, the approach height, every object along the path), and they change only when
        the simulation steps."""
        now = float(self._data.time)
        if self._extent_time != now:
            self._extent_time, self._extents = now, {}
        if name not in self._extents:
            self._extents[name] = self._measure(name)
        return self._extents[name]

    def grasp_extent(self, name: str) -> Extent:
        """The box to grasp `name` by: its whole box, unless that is too wide for the fingers
        while its body is not. A moka pot's handle and spout make its footprint 8 x 15 cm, its
        body is 6 cm across: the body is the geoms that stand at least CORE_HEIGHT of the
        object's height, and a handle or spout is shorter."""
        whole = self.extent(name)
        if min(whole.local_size) <= GRIPPER_OPENING:
            return whole
        height = whole.high[2] - whole.low[2]
        geoms = self._geoms[name] if name in self._geoms else self._collision_geoms(name)
        _, halves, _ = self._posed_boxes(np.array(geoms, dtype=int))
        core = [
            g for g, half in zip(geoms, halves, strict=True) if 2 * half[2] >= CORE_HEIGHT * height
        ]
        if not core or len(core) == len(geoms):
            return whole
        body = self._measure(name, core)
        return body if min(body.local_size) <= GRIPPER_OPENING else whole

    def _measure(self, name: str, geoms: Sequence[int] | None = None) -> Extent:
        if geoms is None:
            geoms = self._geoms[name] if name in self._geoms else self._collision_geoms(name)
        body = self.task_env.obj_body_id[name]
        body_rotation = self._data.xmat[body].reshape(3, 3)
        body_position = self._data.xpos[body]
        low, high = np.full(3, np.inf), np.full(3, -np.inf)
        local_low, local_high = np.full(3, np.inf), np.full(3, -np.inf)
        for geom in geoms:
            box_centre, half = self._model.geom_aabb[geom][:3], self._model.geom_aabb[geom][3:]
            rotation = self._data.geom_xmat[geom].reshape(3, 3)
            centre = self._data.geom_xpos[geom] + rotation @ box_centre
            reach = np.abs(rotation) @ half
            low, high = np.minimum(low, centre - reach), np.maximum(high, centre + reach)
            in_body = body_rotation.T @ rotation  # the geom's box seen from the body frame
            local_centre = body_rotation.T @ (centre - body_position)
            local_reach = np.abs(in_body) @ half
            local_low = np.minimum(local_low, local_centre - local_reach)
            local_high = np.maximum(local_high, local_centre + local_reach)
        size = local_high - local_low
        yaw = float(np.arctan2(body_rotation[1, 0], body_rotation[0, 0]))
        return Extent(low, high, (float(size[0]), float(size[1])), yaw)

    def _base_xy(self) -> np.ndarray:
        return np.array(self._data.body(self.task_env.robots[0].robot_model.root_body).xpos[:2])

    def _towards_robot(self, point: np.ndarray) -> np.ndarray:
        """Unit vector (2,) from `point` towards the robot's base, in the table's plane."""
        towards = self._base_xy() - point[:2]
        return towards / max(float(np.linalg.norm(towards)), 1e-6)

    def _collides(self, geom: int) -> bool:
        return bool(self._model.geom_contype[geom] or self._model.geom_conaffinity[geom])

    def _collision_geoms(self, name: str) -> list[int]:
        """Geoms that collide, of `name`'s body and every body below it."""
        bodies = subtree_bodies(self._model, self.task_env.obj_body_id[name])
        geoms = [
            geom
            for geom in range(self._model.ngeom)
            if self._model.geom_bodyid[geom] in bodies and self._collides(geom)
        ]
        if not geoms:
            raise RuntimeError(f"LIBERO object {name!r} has no collision geoms to measure")
        return geoms

    def _tallest_top_along(self, path: tuple[np.ndarray, np.ndarray], obj: str) -> float:
        """The highest top of the movable objects other than `obj` that the hand, moving along
        the segment `path` (two (2,) points), could hit: those within PATH_MARGIN of it. Objects
        far from the path (a bowl on top of a cabinet) must not lift the whole motion."""
        start, end = path
        tops = [-np.inf]  # not the held object's own bottom: carrying it would raise the target
        for name in self._geoms:
            if name == obj:
                continue
            other = self.extent(name)
            reach = float(np.linalg.norm(other.high[:2] - other.low[:2])) / 2 + PATH_MARGIN
            if _distance_to_segment(other.centre[:2], start, end) < reach:
                tops.append(float(other.high[2]))
        return max(tops)

    def _target_object(self, step: PlaceStep) -> str | None:
        """The object (or fixture) a goal's target is, or holds the target region of."""
        if step.target in self.task_env.obj_body_id:
            return step.target
        site = self.task_env.object_sites_dict.get(step.target)
        parent = getattr(site, "parent_name", None)
        return parent if parent in self.task_env.obj_body_id else None

    def _target_xy(self, step: PlaceStep) -> np.ndarray:
        if step.target in self.task_env.obj_body_id:
            return self.extent(step.target).centre[:2]
        site = np.array(self._data.site(step.target).xpos[:2])
        sharing = [
            other
            for other in self._steps
            if isinstance(other, PlaceStep)
            and other.target == step.target
            and other.relation == "on"
        ]
        if step.relation == "on" and len(sharing) > 1:
            # Two moka pots on one stove: over the region's centre the second lands on the
            # first. Each gets its own spot on the line away from the robot, the first farthest,
            # so the next is not carried over it; LIBERO counts an object's origin anywhere in
            # the region's box as on it.
            spread = SHARED_REGION_SPREAD * float(self._model.site(step.target).size[:2].min())
            slot = np.linspace(spread, -spread, len(sharing))[sharing.index(step)]
            return site - slot * self._towards_robot(site)
        opening = self.articulation.opening_direction(step.target)
        if opening is None:
            return site
        # An open drawer's region runs back under the cabinet; what is dropped over its centre
        # catches on the drawer above. Let go over the part that is out.
        return site + DRAWER_FRONT_SHIFT * opening[:2]

    def _target_top(self, step: PlaceStep) -> float:
        owner = self._target_object(step)
        if owner is not None:
            return float(self.extent(owner).high[2])
        return float(self._data.site(step.target).xpos[2])

    def _touching(self, obj: str) -> bool:
        gripper = self.task_env.robots[0].gripper
        return bool(self.task_env.check_contact(gripper, self.task_env.objects_dict[obj]))


def goal_steps(goal: Sequence[Sequence[str]], task_env: Any) -> list[PlaceStep | JointStep]:
    """The BDDL goal's conjuncts as steps, in the order the expert takes them (module
    docstring); a predicate without a primitive is UnsupportedGoalError."""
    articulation = Articulation(task_env)
    first: list[JointStep] = []
    places: list[PlaceStep] = []
    last: list[JointStep] = []
    for predicate in goal:
        name, *arguments = (str(part).lower() for part in predicate)
        if name in ("in", "on") and len(arguments) == 2 and arguments[0] in task_env.objects_dict:
            if _starts_closed(arguments[1], task_env):
                raise UnsupportedGoalError(
                    f"goal predicate {tuple(predicate)} of {_problem(task_env)!r}: "
                    f"{arguments[1]!r} starts closed, and the scripted LIBERO expert has no "
                    "primitive to open it"
                )
            places.append(PlaceStep(obj=arguments[0], target=arguments[1], relation=name))
            continue
        if name in CHANGES and len(arguments) == 1:
            step = JointStep(target=arguments[0], change=name)
            try:
                articulation.joint_of(step)
            except (ValueError, KeyError) as error:
                raise UnsupportedGoalError(
                    f"goal predicate {tuple(predicate)} of {_problem(task_env)!r}: {error}"
                ) from error
            if not articulation.holds(step):
                (last if name == "close" else first).append(step)
            continue
        raise UnsupportedGoalError(
            f"goal predicate {tuple(predicate)} of {_problem(task_env)!r}: the scripted LIBERO "
            f"expert has primitives for (In obj region), (On obj target), "
            f"{', '.join(f'({change.capitalize()} x)' for change in CHANGES)} only"
        )
    return [*first, *places, *last]


def _starts_closed(target: str, task_env: Any) -> bool:
    """Whether a place target is a region inside a drawer (or door) that is not open now.
    Not LIBERO's `is_close`: a wooden cabinet's drawer at its joint's zero, shut, is neither
    open nor "closed" by LIBERO's strict thresholds."""
    site = task_env.object_sites_dict.get(target)
    if not getattr(site, "joints", None):
        return False
    return not task_env.object_states_dict[target].is_open()


def _problem(task_env: Any) -> str:
    return str(task_env.parsed_problem["problem_name"])


def subtree_bodies(model: mujoco.MjModel, root: int) -> set[int]:
    """`root` and every body below it (MuJoCo numbers a child after its parent)."""
    bodies = {root}
    for body in range(root + 1, model.nbody):
        if model.body_parentid[body] in bodies:
            bodies.add(body)
    return bodies


def _distance_to_segment(point: np.ndarray, start: np.ndarray, end: np.ndarray) -> float:
    """Distance from `point` to the segment from `start` to `end` (all (2,))."""
    span = end - start
    length2 = float(span @ span)
    t = 0.0 if length2 == 0 else float(np.clip((point - start) @ span / length2, 0.0, 1.0))
    return float(np.linalg.norm(point - (start + t * span)))


def _turn(angle: float, reference: float) -> float:
    """|angle - reference| wrapped to [0, pi]."""
    return abs((angle - reference + np.pi) % (2 * np.pi) - np.pi)
