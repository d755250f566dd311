"""Scripted experts: waypoint planners in end-effector space that solve every task from its state.

The expert reads privileged simulator state (object poses) — only to choose its actions; nothing
of it enters observations. For each pick-and-place step of a task it moves through phases:

  approach → descend → grasp → lift → carry → lower → release → retreat

each a target pose for a proportional controller that emits OSC_POSE delta actions. A grasp that
did not lift the object sends it back to `approach` (at most MAX_REGRASPS times). Demonstrations
are varied by Gaussian action noise and jittered heights, seeded, so they are not all identical.

Why a world protocol (`ExpertWorld`): the phase machine is the same for our table-top suites and
for real LIBERO; what differs is geometry (where to close the fingers on a cube, a can or a bowl's
rim; how high to carry; where to let go). `TabletopWorld` answers from our object kinds;
`sim.libero_expert.LiberoWorld` from LIBERO's meshes and BDDL goal. `world_of(env)` picks one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import numpy as np
from robosuite.utils import transform_utils

from sim.env import TabletopEnv
from sim.objects import RECEPTACLE_KINDS, half_height
from sim.scene import TABLE_OFFSET
from sim.tasks import JointStep, PlaceStep

POSITION_SCALE = 0.05  # metres per unit action (robosuite OSC_POSE output_max)
ROTATION_SCALE = 0.5  # radians per unit action
MAX_REGRASPS = 2


class Phase(Enum):
    APPROACH = "approach"
    DESCEND = "descend"
    GRASP = "grasp"
    LIFT = "lift"
    CARRY = "carry"
    LOWER = "lower"
    RELEASE = "release"
    RETREAT = "retreat"
    # A JointStep's (sim.libero_articulation): approach → descend → [grasp] → operate → release
    # → retreat. Listed after RETREAT so that a PlaceStep's phase order above stays contiguous.
    OPERATE = "operate"
    DONE = "done"


PICK_PHASES = (Phase.APPROACH, Phase.DESCEND, Phase.GRASP, Phase.LIFT)
# Steps allowed in a phase before moving on anyway (a phase that never converges must not hang).
PHASE_BUDGET = {
    Phase.APPROACH: 60,
    Phase.DESCEND: 40,
    Phase.GRASP: 8,
    Phase.LIFT: 30,
    Phase.CARRY: 70,
    Phase.LOWER: 40,
    Phase.RELEASE: 6,
    Phase.RETREAT: 12,
    Phase.OPERATE: 90,
}
UNPERTURBED_PHASES = (Phase.GRASP, Phase.RELEASE, Phase.DESCEND, Phase.LOWER, Phase.OPERATE)


@dataclass
class ExpertStep:
    """What the expert did this step, for labels: the action and where it is in the task."""

    action: np.ndarray
    phase: Phase
    step_index: int  # which step of the task
    # index into the plan: 2k = pick (or reach a fixture), 2k+1 = place (or operate it)
    subtask_index: int


class ExpertWorld(Protocol):
    """What the phase machine asks of a scene (module docstring). Positions are world-frame
    metres (3,), quaternions robosuite's (x, y, z, w)."""

    @property
    def steps(self) -> Sequence[PlaceStep]: ...

    @property
    def grasp_steps(self) -> int:
        """Steps the fingers get to close before lifting."""
        ...

    def eef_position(self) -> np.ndarray: ...

    def eef_quaternion(self) -> np.ndarray: ...

    def approach_position(self, obj: str, hover: float) -> np.ndarray:
        """Where the gripper waits above `obj` before descending onto it."""
        ...

    def grasp_position(self, obj: str) -> np.ndarray:
        """Where the gripper's grip site closes on `obj`."""
        ...

    def grasp_rotation(self, obj: str, reference: np.ndarray) -> np.ndarray:
        """The gripper orientation (3, 3) for grasping `obj`: `reference` turned about the
        vertical so the fingers meet two faces it can hold."""
        ...

    def carry_height(self, step: PlaceStep) -> float:
        """Grip-site height at which the held `step.obj` clears everything up to the target."""
        ...

    def release_position(self, step: PlaceStep) -> np.ndarray:
        """Grip-site position at which to open the fingers over `step.target`."""
        ...

    def holding(self, step: PlaceStep) -> bool:
        """Whether `step.obj` is lifted off its support and in the gripper."""
        ...


class TabletopWorld:
    """`ExpertWorld` of our table-top suites (sim/env.py): cubes, cylinders and receptacles whose
    sizes come from their kinds (sim/objects.py)."""

    grasp_steps = PHASE_BUDGET[Phase.GRASP]

    def __init__(self, env: TabletopEnv) -> None:
        self.env = env

    @property
    def steps(self) -> Sequence[PlaceStep]:
        return self.env.task.steps

    def eef_position(self) -> np.ndarray:
        return self.env.eef_position()

    def eef_quaternion(self) -> np.ndarray:
        return self.env.eef_quaternion()

    def approach_position(self, obj: str, hover: float) -> np.ndarray:
        return self.env.object_position(obj) + [0, 0, hover]

    def grasp_position(self, obj: str) -> np.ndarray:
        return self.env.object_position(obj) + [0, 0, -0.004]

    def grasp_rotation(self, obj: str, reference: np.ndarray) -> np.ndarray:
        """A cube's faces repeat every 90°; a cylinder needs no turn."""
        if self.env.object_kind(obj) != "cube":
            return reference
        return turned_about_vertical(reference, self.env.object_yaw(obj), np.pi / 2)

    def carry_height(self, step: PlaceStep) -> float:
        """High enough that the held object clears the table and the target's rim."""
        table_z = TABLE_OFFSET[2]
        target_top = self.env.object_position(step.target)[2] + half_height(
            self.env.object_kind(step.target)
        )
        object_height = 2 * half_height(self.env.object_kind(step.obj))
        return max(table_z + 0.12, target_top + object_height + 0.04)

    def release_position(self, step: PlaceStep) -> np.ndarray:
        target = self.env.object_position(step.target)
        target_kind, obj_kind = self.env.object_kind(step.target), self.env.object_kind(step.obj)
        if target_kind in RECEPTACLE_KINDS:
            floor = (
                target[2] - half_height(target_kind) + RECEPTACLE_KINDS[target_kind].floor_height
            )
            return np.array([target[0], target[1], floor + half_height(obj_kind) + 0.02])
        return np.array(
            [
                target[0],
                target[1],
                target[2] + half_height(target_kind) + half_height(obj_kind) + 0.012,
            ]
        )

    def holding(self, step: PlaceStep) -> bool:
        obj = self.env.object_position(step.obj)
        resting_z = TABLE_OFFSET[2] + half_height(self.env.object_kind(step.obj))
        return obj[2] > resting_z + 0.03 and self.env.touching(step.obj)


def turned_about_vertical(reference: np.ndarray, face_yaw: float, period: float) -> np.ndarray:
    """`reference` (3, 3) turned about the world's vertical by the smallest angle that lines the
    fingers (the Panda closes them along its local y) up with a face at `face_yaw`, given that the
    object looks the same after turning by `period` (pi/2 for a square, pi for a box)."""
    finger_axis = reference[:, 1]
    finger_angle = np.arctan2(finger_axis[1], finger_axis[0])
    turn = (face_yaw - finger_angle + period / 2) % period - period / 2
    rotation_z = np.array(
        [[np.cos(turn), -np.sin(turn), 0], [np.sin(turn), np.cos(turn), 0], [0, 0, 1]]
    )
    return rotation_z @ reference


def world_of(env: Any) -> ExpertWorld:
    """The `ExpertWorld` of a task env: ours or a LIBERO one (imported only when needed)."""
    if isinstance(env, TabletopEnv):
        return TabletopWorld(env)
    from sim.libero_env import LiberoEnv

    if isinstance(env, LiberoEnv):
        from sim.libero_expert import LiberoWorld

        return LiberoWorld(env)
    raise TypeError(
        f"no scripted expert for {type(env).__name__}: expected a TabletopEnv or LiberoEnv"
    )


class ScriptedExpert:
    def __init__(self, world: ExpertWorld, seed: int = 0, action_noise: float = 0.05) -> None:
        self.world = world
        self.rng = np.random.default_rng(seed)
        self.action_noise = action_noise
        self.reset()

    def reset(self) -> None:
        self.step_index = 0
        self.phase = Phase.APPROACH
        self.phase_steps = 0
        self.regrasps = 0
        self.reference_rotation = transform_utils.quat2mat(self.world.eef_quaternion())
        self.target_rotation = self.reference_rotation
        self.engaged_rotation = self.reference_rotation  # the hand's as a JointStep engaged
        self._retreat_to = np.zeros(3)
        self.hover = self.rng.uniform(0.08, 0.12)
        self.carry_jitter = self.rng.uniform(0.0, 0.04)
        self._start_phase(Phase.APPROACH)

    @property
    def done(self) -> bool:
        return self.phase is Phase.DONE

    # ------------------------------------------------------------------ control
    def act(self) -> ExpertStep:
        if self.phase is Phase.DONE:
            return self._record(np.array([0, 0, 0, 0, 0, 0, -1.0]))
        step = self.world.steps[self.step_index]
        target, gripper, tolerance, speed = self._phase_target(step)
        error = target - self.world.eef_position()
        converged = np.linalg.norm(error) < tolerance
        action = np.zeros(7)
        action[:3] = np.clip(error / POSITION_SCALE * 2.0, -speed, speed)
        action[3:6] = np.clip(self._rotation_error() / ROTATION_SCALE, -0.5, 0.5)
        action[6] = gripper
        if self.action_noise and self.phase not in UNPERTURBED_PHASES:
            action[:3] += self.rng.normal(0, self.action_noise, 3)
        action = np.clip(action, -1.0, 1.0)
        record = self._record(action)
        self.phase_steps += 1
        if self._phase_finished(step, converged):
            self._advance(step)
        return record

    def _record(self, action: np.ndarray) -> ExpertStep:
        pick = self.phase in PICK_PHASES
        index = min(self.step_index, len(self.world.steps) - 1)
        subtask = 2 * index + (0 if pick and self.phase is not Phase.DONE else 1)
        return ExpertStep(action.astype(np.float32), self.phase, index, subtask)

    def _phase_target(self, step: PlaceStep | JointStep) -> tuple[np.ndarray, float, float, float]:
        """(target eef position, gripper command, convergence tolerance, max action) of the phase."""
        if isinstance(step, JointStep):
            return self._operation_target(step)
        world = self.world
        eef = world.eef_position()
        if self.phase is Phase.APPROACH:
            return world.approach_position(step.obj, self.hover), -1.0, 0.012, 0.7
        if self.phase is Phase.DESCEND:
            return world.grasp_position(step.obj), -1.0, 0.006, 0.5
        if self.phase is Phase.GRASP:
            return eef, 1.0, np.inf, 0.0
        carry_z = world.carry_height(step) + self.carry_jitter
        if self.phase is Phase.LIFT:
            return np.array([eef[0], eef[1], carry_z]), 1.0, 0.015, 0.7
        release = world.release_position(step)
        if self.phase is Phase.CARRY:
            return np.array([release[0], release[1], carry_z]), 1.0, 0.012, 0.7
        if self.phase is Phase.LOWER:
            return release, 1.0, 0.008, 0.5
        if self.phase is Phase.RELEASE:
            return eef, -1.0, np.inf, 0.0
        return np.array([eef[0], eef[1], release[2] + 0.10]), -1.0, 0.02, 0.7  # RETREAT

    def _operation_target(self, step: JointStep) -> tuple[np.ndarray, float, float, float]:
        """The phases of a JointStep: a push keeps the fingers closed throughout; a turn opens
        them to the fin, closes them on it, turns, and lets go."""
        world: Any = self.world  # LiberoWorld: the only world whose tasks have joints
        eef = world.eef_position()
        fist = -1.0 if world.operation_grips(step) else 1.0
        if self.phase is Phase.APPROACH:
            return world.operation_approach(step, self.hover), fist, 0.012, 0.7
        if self.phase is Phase.DESCEND:
            return world.operation_start(step), fist, 0.006, 0.5
        if self.phase is Phase.GRASP:
            return eef, 1.0, np.inf, 0.0
        if self.phase is Phase.OPERATE:
            target, turned = world.operation_target(step)
            self.target_rotation = world.operation_rotation(step, self.engaged_rotation, turned)
            return target, 1.0, -1.0, 1.0  # never converges: ends when the predicate holds
        if self.phase is Phase.RELEASE:
            return eef, -1.0, np.inf, 0.0
        return self._retreat_to, -1.0, 0.02, 0.7  # RETREAT: straight up from where it let go

    def _rotation_error(self) -> np.ndarray:
        current = transform_utils.quat2mat(self.world.eef_quaternion())
        error = self.target_rotation @ current.T
        return transform_utils.quat2axisangle(transform_utils.mat2quat(error))

    # ------------------------------------------------------------------ phase logic
    def _phase_finished(self, step: PlaceStep | JointStep, converged: bool) -> bool:
        if self.phase is Phase.OPERATE:
            return self.world.operated(step) or self.phase_steps >= PHASE_BUDGET[self.phase]
        if self.phase is Phase.GRASP:
            return self.phase_steps >= self.world.grasp_steps
        if self.phase is Phase.RELEASE:
            return self.phase_steps >= PHASE_BUDGET[self.phase]
        return converged or self.phase_steps >= PHASE_BUDGET[self.phase]

    def _advance(self, step: PlaceStep | JointStep) -> None:
        order = list(Phase)
        if isinstance(step, JointStep) and self.phase in (
            Phase.DESCEND,
            Phase.GRASP,
            Phase.OPERATE,
        ):
            self._advance_operation(step)
            return
        if self.phase is Phase.LIFT and not self.world.holding(step):
            if self.regrasps < MAX_REGRASPS:
                self.regrasps += 1
                self._start_phase(Phase.APPROACH)
                return
        if self.phase is Phase.RETREAT:
            self.step_index += 1
            if self.step_index >= len(self.world.steps):
                self.phase = Phase.DONE
                return
            self.regrasps = 0
            self._start_phase(Phase.APPROACH)
            return
        self._start_phase(order[order.index(self.phase) + 1])

    def _advance_operation(self, step: JointStep) -> None:
        """DESCEND → GRASP (a turn) or OPERATE (a push) → RELEASE, or back to APPROACH for
        another attempt when the predicate does not hold after OPERATE's budget."""
        world: Any = self.world
        if self.phase is Phase.DESCEND and world.operation_grips(step):
            self._start_phase(Phase.GRASP)
        elif self.phase in (Phase.DESCEND, Phase.GRASP):
            world.engage(step)
            self.engaged_rotation = self.target_rotation
            self._start_phase(Phase.OPERATE)
        elif world.operated(step) or self.regrasps >= MAX_REGRASPS:
            self._start_phase(Phase.RELEASE)
        else:
            self.regrasps += 1
            self._start_phase(Phase.APPROACH)

    def _start_phase(self, phase: Phase) -> None:
        self.phase = phase
        self.phase_steps = 0
        if phase is Phase.RETREAT:
            self._retreat_to = self.world.eef_position() + [0, 0, 0.10]
        if phase is Phase.APPROACH:
            step = self.world.steps[self.step_index]
            if isinstance(step, JointStep):
                world: Any = self.world
                self.target_rotation = world.plan_operation(step, self.reference_rotation)
            else:
                self.target_rotation = self.world.grasp_rotation(step.obj, self.reference_rotation)


def rollout(
    env: Any,
    expert_seed: int,
    *,
    scene_seed: int | None = None,
    init_state: int | None = None,
    before_step: Callable[[dict, ExpertStep], None] | None = None,
) -> bool:
    """Reset to training scene `scene_seed` (or evaluation init state `init_state`), run the
    expert until the episode ends, and return whether it succeeded. `before_step(observation,
    step)` sees every frame together with the action about to be taken (for recording)."""
    options = {"init_state": init_state} if init_state is not None else None
    observation, info = env.reset(seed=scene_seed, options=options)
    expert = ScriptedExpert(world_of(env), seed=expert_seed)
    for _ in range(env.max_episode_steps):
        step = expert.act()
        if before_step is not None:
            before_step(observation, step)
        observation, _, terminated, truncated, info = env.step(step.action)
        if terminated or truncated:
            break
    return bool(info["success"])
