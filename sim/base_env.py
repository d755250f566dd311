"""`SimEnv`: the episode bookkeeping every environment of `sim` shares.

Why a base class: each environment checked actions, counted steps and truncated episodes with
its own copy of the same lines, and a fix to one (a NaN let through, an off-by-one at the episode
end) would silently miss the others. Here it is written once; a subclass supplies the physics
(`_apply_action`) and its own reset.

The rules, the same for our table-top suites and LIBERO:
- an action is 7 finite numbers (any shape that flattens to 7); values outside [-1, 1] are
  clipped, as robosuite's controllers would; anything else raises ValueError;
- a step before the first `reset()` raises RuntimeError;
- reward is 1.0 on success, which ends the episode (`terminated`); otherwise the episode is
  `truncated` once `max_episode_steps` steps were taken. Steps a reset takes to let the scene
  settle do not count.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

ACTION_SIZE = 7  # DESIGN.md: delta position (3), delta axis-angle (3), gripper
# After a reset every env holds still this many steps (uncounted) so objects come to rest; the
# LIBERO evaluation protocol's number, used for our suites too.
SETTLE_STEPS = 10
NO_OP_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)  # hold still, gripper open


def checked_action(action: Any) -> np.ndarray:
    """`action` as float64[7] clipped to [-1, 1], or a ValueError saying what an action is."""
    flat = np.asarray(action, dtype=np.float64).reshape(-1)
    if flat.shape != (ACTION_SIZE,) or not np.isfinite(flat).all():
        raise ValueError(f"action must be 7 finite numbers in [-1, 1], got {flat}")
    return np.clip(flat, -1.0, 1.0)


class SimEnv(gym.Env):
    """A gymnasium env with sim's action rules, step counter and episode length (module doc).

    Subclasses set `max_episode_steps`, call `super().reset(seed=seed)` first in their `reset`,
    and implement `_apply_action`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}
    max_episode_steps: int
    steps: int = 0  # steps taken in this episode
    _episode_started: bool = False

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Seed `np_random` (gymnasium's rule) and start counting a new episode."""
        super().reset(seed=seed)
        self.steps = 0
        self._episode_started = True
        return {}, {}  # subclasses return their own observation and info

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if not self._episode_started:
            raise RuntimeError("call reset() before step()")
        observation, success = self._apply_action(checked_action(action))
        self.steps += 1
        truncated = self.steps >= self.max_episode_steps and not success
        return observation, float(success), success, truncated, {"success": success}

    def _apply_action(self, action: np.ndarray) -> tuple[dict[str, Any], bool]:
        """Advance the simulation by one control step of `action` (float64[7], in [-1, 1]);
        return the new observation and whether the task is now solved."""
        raise NotImplementedError
