"""`SuiteEnv`: any task of one suite behind a single environment, for evaluation workers.

An evaluation is a queue of (task, init state) episodes shared by K worker processes; a worker
that finishes an episode takes the next one, whatever its task. `SuiteEnv` makes that possible:
`reset(options={"task": name, "init_state": i})` switches to the task's environment, building it
on first use and keeping the most recent few (building a robosuite scene takes seconds, and the
queue is task-major so switches are rare).

With `oracle_expert=True` every observation also carries `expert.action`, the scripted expert's
next action computed from privileged state. That lets the expert run through exactly the same
evaluation loop as a learned policy (as its "policy", `ExpertPolicy` in sim/baselines.py), which is
how the evaluator's own success measurement is checked against the expert's known success.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from data.schema import DEFAULT_CAMERA_RESOLUTION, image_key
from sim.catalog import get_suite, make

EXPERT_ACTION_KEY = "expert.action"
AGENTVIEW_KEY = image_key("agentview")  # the camera that videos film


class SuiteEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        suite: str,
        *,
        image_size: tuple[int, int] = DEFAULT_CAMERA_RESOLUTION,
        oracle_expert: bool = False,
        render_images: bool = True,
        max_cached_envs: int = 2,
    ) -> None:
        self.spec = get_suite(suite)  # an unknown suite fails here, with the list of known ones
        self.suite = suite
        self.image_size = tuple(image_size)
        self.oracle_expert = oracle_expert
        # Off only for the oracle expert, which never looks at images (rendering is most of a
        # step's cost). When on, `step_many` still draws only the frames that are looked at.
        self.render_images = render_images
        self.max_cached_envs = max_cached_envs
        self._envs: collections.OrderedDict[str, gym.Env] = collections.OrderedDict()
        self.env: gym.Env | None = None
        self._expert: Any = None
        self._expert_action: np.ndarray | None = None  # the oracle's next action, once reset

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """`options`: {"task": name or index (required), "init_state": i (optional)}; `seed` as
        the task env takes it."""
        options = dict(options or {})
        if "task" not in options:
            raise KeyError("SuiteEnv.reset needs options['task'] (a task name of the suite)")
        task = self.spec.resolve(options.pop("task"))
        self.env = self._env_for(task)
        observation, info = self.env.reset(seed=seed, options=options or None)
        info = {**info, "max_episode_steps": self.env.max_episode_steps}
        if self.oracle_expert:
            from sim.expert import ScriptedExpert, world_of  # only the oracle needs the planner

            # Seeded by the episode, not the worker, so results do not depend on scheduling.
            expert_seed = int(options.get("init_state", seed or 0))
            self._expert = ScriptedExpert(world_of(self.env), seed=expert_seed)
            observation = self._with_expert_action(observation)
        return observation, info

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self.env is None:
            raise RuntimeError("SuiteEnv.step before reset")
        observation, reward, terminated, truncated, info = self.env.step(action)
        if self.oracle_expert and not (terminated or truncated):
            observation = self._with_expert_action(observation)
        return observation, reward, terminated, truncated, info

    def step_many(self, actions: np.ndarray, film: bool = False) -> dict[str, Any]:
        """Execute actions (n, 7) in order, stopping early when the episode ends.

        Only the last observation is rendered (unless `film`): a policy that executes n actions
        per chunk looks at one observation in n, and rendering two cameras is most of a step's
        cost. With `film`, every observation is rendered and `frames` holds the agentview image
        seen after each executed action but the last (the frames before actions 1..k-1).
        """
        actions = np.asarray(actions, dtype=np.float32).reshape(-1, 7)
        return self._run(lambda index: actions[index], len(actions), film)

    def follow_expert(self, film: bool = False) -> dict[str, Any]:
        """Let the oracle expert act until the episode ends, inside this process.

        Why: the expert's next action depends on the state its last one produced, so run from
        the evaluation loop it costs one round trip to the worker per step. Same reply as
        `step_many`, for the same episode.
        """
        if not self.oracle_expert:
            raise RuntimeError("SuiteEnv.follow_expert needs oracle_expert=True")
        if self.env is None:
            raise RuntimeError("SuiteEnv.follow_expert before reset")
        return self._run(lambda _index: self._expert_action, self.env.max_episode_steps, film)

    def _run(
        self,
        next_action: Callable[[int], np.ndarray],
        limit: int,
        film: bool,
    ) -> dict[str, Any]:
        """Step `next_action(index)` up to `limit` times (the step_many contract)."""
        if self.env is None:
            raise RuntimeError("SuiteEnv.step_many before reset")
        can_skip_rendering = hasattr(self.env, "render_images") and self.render_images
        frames: list[np.ndarray] = []
        reward = 0.0
        try:
            for index in range(limit):
                last = index == limit - 1
                if can_skip_rendering:
                    self.env.render_images = film or last
                observation, step_reward, terminated, truncated, info = self.step(
                    next_action(index)
                )
                reward += float(step_reward)
                if terminated or truncated:
                    break
                if film and not last:
                    frames.append(observation[AGENTVIEW_KEY])
        finally:
            if can_skip_rendering:
                self.env.render_images = True
        return {
            "observation": observation,
            "reward": reward,
            "terminated": bool(terminated),
            "truncated": bool(truncated),
            "info": info,
            "steps": index + 1,
            "frames": frames,
        }

    def render(self) -> np.ndarray:
        if self.env is None:
            raise RuntimeError("SuiteEnv.render before reset")
        return self.env.render()

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()
        self.env = None

    def _env_for(self, task: str) -> gym.Env:
        if task in self._envs:
            self._envs.move_to_end(task)
            return self._envs[task]
        options = {} if self.render_images else {"render_images": False}
        env = make(self.suite, task, image_size=self.image_size, **options)
        self._envs[task] = env
        while len(self._envs) > self.max_cached_envs:
            _, oldest = self._envs.popitem(last=False)
            oldest.close()
        return env

    def _with_expert_action(self, observation: dict[str, Any]) -> dict[str, Any]:
        self._expert_action = np.asarray(self._expert.act().action, dtype=np.float32)
        return {**observation, EXPERT_ACTION_KEY: self._expert_action}


def build_suite_env(
    suite: str, image_size: tuple[int, int], oracle_expert: bool, render_images: bool, index: int
) -> SuiteEnv:
    """Worker `index`'s env (module level so `SubprocVectorEnv` can pickle a partial of it)."""
    return SuiteEnv(
        suite, image_size=image_size, oracle_expert=oracle_expert, render_images=render_images
    )
