"""Registry of task suites: `sim.make(suite, task)` builds any registered environment.

A suite is a named, ordered set of tasks that share an environment factory (our table-top suites,
the real LIBERO suites). Registering instead of if/elif lets each suite live in its own module and
lets tools list what exists (`available_suites()`, `suite_tasks(name)`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

EnvFactory = Callable[..., gym.Env]


@dataclass(frozen=True)
class SuiteSpec:
    """A suite: its task names (in order), how to build one task's env, and per-suite limits."""

    name: str
    tasks: Sequence[str]  # a tuple, or a lazy sequence when listing needs an optional package
    factory: Callable[[str], EnvFactory]  # task name -> callable(**config) -> env
    max_episode_steps: int
    description: str = ""
    # Optional packages a suite needs (informational; its factory raises with an install hint).
    requires: tuple[str, ...] = field(default=())


_SUITES: dict[str, SuiteSpec] = {}


def register_suite(spec: SuiteSpec) -> SuiteSpec:
    if spec.name in _SUITES:
        raise ValueError(f"suite {spec.name!r} is already registered")
    _SUITES[spec.name] = spec
    return spec


def _ensure_builtin_suites() -> None:
    # Importing the modules registers their suites; kept lazy so `import sim` stays cheap.
    import sim.libero_env  # noqa: F401
    import sim.suites  # noqa: F401


def available_suites() -> list[str]:
    _ensure_builtin_suites()
    return sorted(_SUITES)


def get_suite(name: str) -> SuiteSpec:
    _ensure_builtin_suites()
    if name not in _SUITES:
        raise KeyError(
            f"unknown suite {name!r}{did_you_mean(name, _SUITES)}; available: {', '.join(sorted(_SUITES))}"
        )
    return _SUITES[name]


def suite_tasks(name: str) -> tuple[str, ...]:
    return tuple(get_suite(name).tasks)


def make(suite: str, task: str | int, **config: Any) -> gym.Env:
    """Build the environment of one task; `task` is its name or its index in the suite."""
    spec = get_suite(suite)
    if isinstance(task, int):
        if not 0 <= task < len(spec.tasks):
            raise IndexError(f"suite {suite!r} has tasks 0..{len(spec.tasks) - 1}, not {task}")
        task = spec.tasks[task]
    if task not in spec.tasks:
        raise KeyError(
            f"suite {suite!r} has no task {task!r}{did_you_mean(task, spec.tasks)}; "
            f"its tasks: {', '.join(spec.tasks)}"
        )
    return spec.factory(task)(**config)


def did_you_mean(name: str, options: Any) -> str:
    """A " (did you mean 'x'?)" hint naming the closest option, or '' when none is close."""
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
