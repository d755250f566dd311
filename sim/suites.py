"""Our table-top suites, registered under `sim.make`.

quickstart  3 easy pick-and-place tasks with narrow randomization: small enough that a tiny
            policy learns them on 2 CPU cores
tabletop    14 tasks in 4 families (pick_place, stack, spatial, multi_step)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from sim.env import TabletopEnv
from sim.registry import SuiteSpec, register_suite
from sim.tasks import QUICKSTART_TASKS, TABLETOP_TASKS, TaskSpec

SUITE_TASKS: dict[str, tuple[TaskSpec, ...]] = {
    "quickstart": QUICKSTART_TASKS,
    "tabletop": TABLETOP_TASKS,
}
MAX_EPISODE_STEPS = {"quickstart": 200, "tabletop": 400}


def _factory(suite: str, task: str) -> Callable[..., TabletopEnv]:
    # `task` is a name the registry already resolved (SuiteSpec.resolve).
    index = [spec.instruction for spec in SUITE_TASKS[suite]].index(task)
    return partial(_build, suite, index)


def _build(suite: str, index: int, **config: object) -> TabletopEnv:
    config.setdefault("max_episode_steps", MAX_EPISODE_STEPS[suite])
    return TabletopEnv(SUITE_TASKS[suite][index], task_id=index, **config)  # type: ignore[arg-type]


for _name, _description in (
    ("quickstart", "3 easy pick-and-place tasks for CPU training"),
    ("tabletop", "14 tasks: pick_place, stack, spatial, multi_step"),
):
    register_suite(
        SuiteSpec(
            name=_name,
            tasks=tuple(spec.instruction for spec in SUITE_TASKS[_name]),
            families=tuple(spec.family for spec in SUITE_TASKS[_name]),
            factory=partial(_factory, _name),
            max_episode_steps=MAX_EPISODE_STEPS[_name],
            description=_description,
        )
    )
