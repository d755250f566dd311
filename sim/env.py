"""`TabletopEnv`: one task of our suites as a gymnasium environment (DESIGN.md observations).

Observations carry only what a real robot has: two camera images, proprioception and the
instruction. Object poses (privileged state) are reachable through `object_position` & co. for the
scripted expert and the label generator, and never enter the observation dict.

Episodes are reproducible from an integer: `reset(seed=s)` is training episode s of the task and
`reset(options={"init_state": i})` its fixed evaluation init state i (0..49); the two draw from
disjoint seed streams, so evaluation scenes are never training scenes.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np
from robosuite.utils import transform_utils

from data.schema import DEFAULT_CAMERA_RESOLUTION, STATE_KEY, TASK_KEY, image_key
from sim.base_env import NO_OP_ACTION, SETTLE_STEPS, SimEnv
from sim.camera import CameraRig
from sim.objects import (
    COLORS,
    RECEPTACLE_COLORS,
    RECEPTACLE_KINDS,
    ObjectSpec,
    footprint_radius,
    half_height,
)
from sim.scene import TABLE_OFFSET, TabletopScene
from sim.spaces import action_space, observation_space
from sim.tasks import LayoutConstraint, PlaceStep, TaskSpec

CAMERAS = {"agentview": "agentview", "wrist": "robot0_eye_in_hand"}
NUM_INIT_STATES = 50
ARM_INIT_NOISE = 0.02  # rad, per joint, like robosuite's default initialization noise
_STREAM_TRAIN, _STREAM_EVAL = 0, 1


class TabletopEnv(SimEnv):
    """One language-conditioned table-top task with a Panda arm (OSC_POSE deltas at 20 Hz).

    Action checks, step counting and truncation are `SimEnv`'s (sim/base_env.py)."""

    def __init__(
        self,
        task: TaskSpec,
        task_id: int = 0,
        image_size: tuple[int, int] = DEFAULT_CAMERA_RESOLUTION,
        max_episode_steps: int = 300,
        render_mode: str = "rgb_array",
        render_images: bool = True,
    ) -> None:
        self.task = task
        self.task_id = task_id
        self.task_description = task.instruction
        self.image_size = tuple(image_size)
        self.max_episode_steps = max_episode_steps
        self.num_init_states = NUM_INIT_STATES
        self.render_mode = render_mode
        # Off for expert statistics and other state-only uses: rendering is most of a step's cost.
        self.render_images = render_images
        self.scene = TabletopScene(task.objects)
        self.sim = self.scene.sim
        self.model: mujoco.MjModel = self.sim.model._model
        self.data: mujoco.MjData = self.sim.data._data
        self.robot = self.scene.robots[0]
        self.cameras = CameraRig(self.model, *self.image_size)
        self._object_body = {
            name: self.sim.model.body_name2id(obj.root_body)
            for name, obj in self.scene.mujoco_objects.items()
        }
        self._object_joint = {
            name: obj.joints[0] for name, obj in self.scene.mujoco_objects.items()
        }
        self._object_geoms = {
            name: [self.sim.model.geom_name2id(geom) for geom in obj.visual_geoms]
            for name, obj in self.scene.mujoco_objects.items()
        }
        self.observation_space = observation_space(*self.image_size)
        self.action_space = action_space()
        self.episode_seed: int | None = None

    # ------------------------------------------------------------------ gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        if "init_state" in options:
            index = int(options["init_state"])
            if not 0 <= index < NUM_INIT_STATES:
                raise ValueError(f"init_state must be in 0..{NUM_INIT_STATES - 1}, got {index}")
            rng = self._episode_rng(_STREAM_EVAL, index)
            self.episode_seed = None
        else:
            seed = int(self.np_random.integers(2**31)) if seed is None else int(seed)
            rng = self._episode_rng(_STREAM_TRAIN, seed)
            self.episode_seed = seed
        self.scene.reset()
        # A soft reset keeps state that would make episodes depend on the previous one: the
        # gripper command robosuite integrates, and MuJoCo's solver warm start.
        self.robot.gripper.current_action = np.zeros(self.robot.gripper.dof)
        mujoco.mj_resetData(self.model, self.data)
        self._pose_arm(rng)
        self._place_objects(rng)
        self._paint_objects(rng)
        for _ in range(SETTLE_STEPS):
            self.scene.step(NO_OP_ACTION)
        return self._observation(), {"success": self.is_success(), "task": self.task_description}

    def _apply_action(self, action: np.ndarray) -> tuple[dict[str, Any], bool]:
        self.scene.step(action)
        success = self.is_success()
        return self._observation(), success

    def render(self) -> np.ndarray:
        return self.cameras.render(self.data, CAMERAS["agentview"])

    def close(self) -> None:
        self.cameras.close()
        self.scene.close()

    # ------------------------------------------------------------------ observations
    def _observation(self) -> dict[str, Any]:
        observation: dict[str, Any] = {
            STATE_KEY: self.proprio_state(),
            TASK_KEY: self.task_description,
        }
        if self.render_images:
            for camera, mujoco_camera in CAMERAS.items():
                observation[image_key(camera)] = self.cameras.render(self.data, mujoco_camera)
        return observation

    def proprio_state(self) -> np.ndarray:
        """float32[8]: eef position, eef axis-angle, gripper finger positions."""
        quat = self.eef_quaternion()
        gripper = self.sim.data.qpos[self.robot._ref_gripper_joint_pos_indexes]
        return np.concatenate(
            [self.eef_position(), transform_utils.quat2axisangle(quat), gripper]
        ).astype(np.float32)

    def eef_position(self) -> np.ndarray:
        return np.array(self.sim.data.site_xpos[self.robot.eef_site_id])

    def eef_quaternion(self) -> np.ndarray:
        """(x, y, z, w), robosuite's convention."""
        return transform_utils.convert_quat(
            self.sim.data.get_body_xquat(self.robot.robot_model.eef_name), to="xyzw"
        )

    # ------------------------------------------------------------------ privileged state
    def object_position(self, name: str) -> np.ndarray:
        return np.array(self.data.xpos[self._object_body[name]])

    def object_yaw(self, name: str) -> float:
        rotation = self.data.xmat[self._object_body[name]].reshape(3, 3)
        return float(np.arctan2(rotation[1, 0], rotation[0, 0]))

    def object_geom_ids(self, name: str) -> list[int]:
        return self._object_geoms[name]

    def is_grasping(self, name: str) -> bool:
        return bool(self.scene._check_grasp(self.robot.gripper, self.scene.mujoco_objects[name]))

    def touching(self, name: str) -> bool:
        return bool(self.scene.check_contact(self.robot.gripper, self.scene.mujoco_objects[name]))

    def step_done(self, step: PlaceStep) -> bool:
        """Whether `step.obj` rests in/on `step.target` (geometry only)."""
        obj, target = self.object_position(step.obj), self.object_position(step.target)
        obj_kind, target_kind = self.object_kind(step.obj), self.object_kind(step.target)
        if target_kind in RECEPTACLE_KINDS:
            geometry = RECEPTACLE_KINDS[target_kind]
            yaw = self.object_yaw(step.target)
            offset = obj[:2] - target[:2]
            local = np.array(
                [
                    np.cos(yaw) * offset[0] + np.sin(yaw) * offset[1],
                    -np.sin(yaw) * offset[0] + np.cos(yaw) * offset[1],
                ]
            )
            inside = bool(np.all(np.abs(local) <= np.array(geometry.half_extent)))
            resting_height = (
                target[2] - half_height(target_kind) + geometry.floor_height + half_height(obj_kind)
            )
            return inside and abs(obj[2] - resting_height) < 0.02
        # stacking on an object
        centred = np.linalg.norm(obj[:2] - target[:2]) < 0.025
        above = abs(obj[2] - target[2] - half_height(obj_kind) - half_height(target_kind)) < 0.012
        return bool(centred and above)

    def is_success(self) -> bool:
        return all(self.step_done(step) and not self.touching(step.obj) for step in self.task.steps)

    def object_kind(self, name: str) -> str:
        return next(spec.kind for spec in self.task.objects if spec.name == name)

    # ------------------------------------------------------------------ scene randomization
    def _episode_rng(self, stream: int, index: int) -> np.random.Generator:
        # A task's identity enters the seed through its instruction, so suites can be reordered.
        task_key = (
            int.from_bytes(self.task.instruction.encode()[:16].ljust(16, b"\0"), "little") % 2**63
        )
        return np.random.default_rng(
            np.random.SeedSequence([task_key, len(self.task.instruction), stream, index])
        )

    def _pose_arm(self, rng: np.random.Generator) -> None:
        joints = self.robot._ref_joint_pos_indexes
        init = np.array(self.robot.init_qpos) + rng.normal(0.0, ARM_INIT_NOISE, len(joints))
        self.sim.data.qpos[joints] = init
        self.sim.data.qvel[joints] = 0.0
        self.sim.forward()
        self.robot.controller.update(force=True)
        self.robot.controller.reset_goal()

    def _place_objects(self, rng: np.random.Generator) -> None:
        range_x, range_y = self.task.placement_range
        landmark_of = {c.subject: c for c in self.task.layout}
        order = sorted(
            self.task.objects, key=lambda spec: (spec.name in landmark_of, not spec.is_receptacle)
        )
        for _attempt in range(1000):
            placed: dict[str, np.ndarray] = {}
            for spec in order:
                position = self._sample_position(
                    rng, spec, placed, landmark_of.get(spec.name), range_x, range_y
                )
                if position is None:
                    break
                placed[spec.name] = position
            else:
                break
        else:
            raise RuntimeError(
                f"could not lay out the scene of {self.task.instruction!r} in 1000 attempts"
            )
        for spec in self.task.objects:
            x, y = placed[spec.name]
            z = TABLE_OFFSET[2] + half_height(spec.kind) + 0.002
            yaw = rng.uniform(-self.task.max_yaw, self.task.max_yaw) if spec.kind != "bowl" else 0.0
            quat = np.array(
                [np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]
            )  # (w, x, y, z) as MuJoCo stores
            self.sim.data.set_joint_qpos(
                self._object_joint[spec.name], np.concatenate([[x, y, z], quat])
            )
        self.sim.forward()

    def _sample_position(
        self,
        rng: np.random.Generator,
        spec: ObjectSpec,
        placed: dict[str, np.ndarray],
        constraint: LayoutConstraint | None,
        range_x: float,
        range_y: float,
    ) -> np.ndarray | None:
        """A free (x, y) for `spec` that keeps clear of what is placed and obeys its constraint."""
        region = self.task.regions.get(spec.name)
        for _ in range(50):
            if region is not None:
                half = self.task.region_half_size
                candidate = np.asarray(region) + rng.uniform(-half, half, size=2)
            elif constraint is None:
                candidate = np.array(
                    [rng.uniform(-range_x, range_x), rng.uniform(-range_y, range_y)]
                )
            else:
                landmark = placed[constraint.landmark]
                # Sides as seen in the agentview image, which faces the robot: image-left is -y.
                side = -1.0 if constraint.relation == "left_of" else 1.0
                candidate = landmark + np.array(
                    [rng.uniform(-0.06, 0.06), side * rng.uniform(0.11, 0.16)]
                )
                if abs(candidate[0]) > range_x + 0.02 or abs(candidate[1]) > range_y + 0.05:
                    continue
            clearance = [
                np.linalg.norm(candidate - position)
                - footprint_radius(spec.kind)
                - footprint_radius(self.object_kind(name))
                - 0.01
                for name, position in placed.items()
            ]
            if all(gap > 0 for gap in clearance):
                return candidate
        return None

    def _paint_objects(self, rng: np.random.Generator) -> None:
        named = {spec.color for spec in self.task.objects if spec.color}
        free_colors = [name for name in COLORS if name not in named]
        shared_cube_color = COLORS[free_colors[rng.integers(len(free_colors))]]
        receptacle_palette = list(RECEPTACLE_COLORS.values())
        for spec in self.task.objects:
            if spec.color is not None:
                rgba = COLORS[spec.color]
            elif spec.is_receptacle:
                rgba = receptacle_palette[rng.integers(len(receptacle_palette))]
            else:
                rgba = shared_cube_color  # look-alike objects told apart only by where they are
            for geom in self._object_geoms[spec.name]:
                self.model.geom_rgba[geom] = rgba
