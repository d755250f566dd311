"""Every suite `sim` ships, and the lookups users call: `make`, `get_suite`, `available_suites`.

Why a module of its own: the registry (sim/registry.py) must not import the suite modules that
import it, yet a lookup must never run before they registered. Importing this module imports
each suite module once, so anything reached through here (or through `sim.make` & co., which
`sim/__init__.py` forwards here) sees the full set. A new suite module is added to the imports
below.

Importing this imports robosuite (our suites' object models) but never the optional `libero`
package: LIBERO's task names are read from it on first use (see sim/libero_env.py).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

import sim.libero_env  # noqa: F401  registers libero_spatial, libero_object, ..., libero_90
import sim.suites  # noqa: F401  registers quickstart, tabletop
from sim.registry import SuiteSpec, registered_names, registered_suite


def available_suites() -> list[str]:
    """Names of every suite, sorted."""
    return registered_names()


def get_suite(name: str) -> SuiteSpec:
    """The suite `name`; an unknown name fails with the closest one and the list of suites."""
    return registered_suite(name)


def suite_tasks(name: str) -> tuple[str, ...]:
    """Task names of suite `name`, in the suite's order (a task's index is its position)."""
    return tuple(get_suite(name).tasks)


def make(suite: str, task: str | int, **config: Any) -> gym.Env:
    """Build the environment of one task; `task` is its name or its index in the suite."""
    spec = get_suite(suite)
    return spec.factory(spec.resolve(task))(**config)
