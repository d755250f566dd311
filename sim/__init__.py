"""MuJoCo/robosuite environments: task suites, scripted experts and reasoning labels.

May import `data` (to write episodes), never `vla`. Every environment follows the gymnasium API
with the observation dict of DESIGN.md:

    env = sim.make("quickstart", "put the red cube on the plate")
    obs, info = env.reset(seed=0)                  # or options={"init_state": i}, i in 0..49
    obs, reward, terminated, truncated, info = env.step(action)   # info["success"]

The lookups live in `sim.catalog` (which registers every suite first) and are forwarded lazily
(PEP 562): `import sim.registry`, `import sim.spaces` & co. run this file first, and must not pull
in every suite module and robosuite with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sim.catalog import available_suites, get_suite, make, suite_tasks

__all__ = ["available_suites", "get_suite", "make", "suite_tasks"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("sim.catalog"), name)
    raise AttributeError(f"module 'sim' has no attribute {name!r}")
