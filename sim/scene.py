"""The robosuite environment under our tasks: a Panda with OSC_POSE control at a table.

robosuite supplies the robot model, its gripper, the operational-space controller and the
physics loop; this class only adds the scene objects. Everything episode-specific (object poses,
colours, the initial arm pose) is set by `sim.env.TabletopEnv` from its own seeded generator, so
a seed fully determines an episode (robosuite's own randomness is switched off).
"""

from __future__ import annotations

import numpy as np
from robosuite.controllers import load_controller_config
from robosuite.environments.manipulation.single_arm_env import SingleArmEnv
from robosuite.models.arenas import TableArena
from robosuite.models.tasks import ManipulationTask

from sim.objects import ObjectSpec, build_object

TABLE_HALF_SIZE = (0.4, 0.4, 0.025)
TABLE_OFFSET = np.array([0.0, 0.0, 0.8])
CONTROL_FREQ = 20


class TabletopScene(SingleArmEnv):
    """A table with the given objects in front of a Panda arm (robosuite conventions)."""

    def __init__(self, objects: tuple[ObjectSpec, ...], control_freq: int = CONTROL_FREQ) -> None:
        self.object_specs = objects
        self.mujoco_objects = {}
        super().__init__(
            robots="Panda",
            controller_configs=load_controller_config(default_controller="OSC_POSE"),
            gripper_types="default",
            initialization_noise=None,  # the gym env adds its own, seeded
            use_camera_obs=False,  # the gym env renders cameras itself (no shadows: 10x faster)
            has_renderer=False,
            has_offscreen_renderer=False,
            control_freq=control_freq,
            horizon=10**9,
            ignore_done=True,
            hard_reset=False,  # reset re-poses objects instead of recompiling the model (~0.3 s)
        )

    def _load_model(self) -> None:
        super()._load_model()
        robot = self.robots[0]
        robot.robot_model.set_base_xpos(
            robot.robot_model.base_xpos_offset["table"](TABLE_HALF_SIZE[0] * 2)
        )
        arena = TableArena(
            table_full_size=tuple(2 * np.array(TABLE_HALF_SIZE)),
            table_friction=(1.0, 5e-3, 1e-4),
            table_offset=TABLE_OFFSET,
        )
        arena.set_origin([0, 0, 0])
        self.mujoco_objects = {spec.name: build_object(spec) for spec in self.object_specs}
        self.model = ManipulationTask(
            mujoco_arena=arena,
            mujoco_robots=[robot.robot_model],
            mujoco_objects=list(self.mujoco_objects.values()),
        )

    def reward(self, action: np.ndarray | None = None) -> float:
        return 0.0  # success is judged by the gym env, which knows the task

    def _check_success(self) -> bool:
        return False
