"""The suite registry: `SuiteSpec`, `register_suite` and the lookups on what is registered.

A suite is a named, ordered set of tasks that share an environment factory (our table-top suites,
the real LIBERO suites). Registering instead of if/elif lets each suite live in its own module and
lets tools list what exists.

This module imports no module that registers with it (timm's way), so a suite module can import
it without a cycle. Registration therefore happens elsewhere: `sim.catalog` imports every suite
module and is what users look suites up through (`sim.make`, `sim.get_suite`, ...). Looking a
name up here, before the catalog was imported, finds only what happens to be registered already.
"""

from __future__ import annotations

import difflib
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import gymnasium as gym

EnvFactory = Callable[..., gym.Env]


class UnknownNameError(KeyError, ValueError):
    """An unknown suite or task name.

    Both a KeyError (a failed lookup) and a ValueError (a bad argument), so callers written for
    either keep catching it; printed without the quotes KeyError adds, since it is read by people.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TaskIndexError(IndexError, ValueError):
    """A task index outside the suite; an IndexError and a ValueError for the same reason."""


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
    # The family of each task, in task order ("pick_place", "stack", ...), where the suite groups
    # its tasks; reports then add one success row per family. Empty: no grouping.
    families: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.families and len(self.families) != len(self.tasks):
            raise ValueError(
                f"suite {self.name!r}: {len(self.families)} families for {len(self.tasks)} tasks"
            )

    def family_of(self, task: str | int) -> str | None:
        """The family of `task` (a name or an index), or None when the suite has none."""
        return self.families[self.index(task)] if self.families else None

    def family_by_task(self, tasks: Iterable[str | int]) -> dict[str, str]:
        """Task name -> family for `tasks` (names or indices); {} when the suite has none."""
        if not self.families:
            return {}
        return {self.resolve(task): self.families[self.index(task)] for task in tasks}

    def resolve(self, task: str | int) -> str:
        """The name of `task`, given as its name or its index in the suite.

        The one place a task reference is checked, so every entry point (sim.make, eval, dataset
        generation) accepts the same forms and fails with the same advice. A string of digits is
        an index, because command lines pass indices as text.
        """
        return self.tasks[self.index(task)]

    def index(self, task: str | int) -> int:
        """The position of `task` (a name or an index) in the suite; see `resolve`."""
        names = list(self.tasks)
        if isinstance(task, str) and task in names:
            return names.index(task)
        if isinstance(task, str) and task.isdigit():
            task = int(task)
        if isinstance(task, str):
            raise UnknownNameError(
                f"suite {self.name!r} has no task {task!r}{did_you_mean(task, names)}; "
                f"{self._listing_hint()}"
            )
        if isinstance(task, bool):
            raise TypeError(f"a task is a name or an index, not {task!r}")
        index = operator.index(task)  # also numpy integers; a float is refused here
        if not 0 <= index < len(names):
            raise TaskIndexError(
                f"task index {index} is out of range: suite {self.name!r} has {len(names)} tasks "
                f"(0..{len(names) - 1}); {self._listing_hint()}"
            )
        return index

    def _listing_hint(self) -> str:
        return f"run `eval.py --suite {self.name} --list-tasks` to see them"


_SUITES: dict[str, SuiteSpec] = {}


def register_suite(spec: SuiteSpec) -> SuiteSpec:
    """Add `spec` under its name; returns it so a suite module can keep a handle on it."""
    if spec.name in _SUITES:
        raise ValueError(f"suite {spec.name!r} is already registered")
    _SUITES[spec.name] = spec
    return spec


def registered_names() -> list[str]:
    """Names of the suites registered so far, sorted."""
    return sorted(_SUITES)


def registered_suite(name: str) -> SuiteSpec:
    """The registered suite `name`, or an error with the closest name and the known ones."""
    if name not in _SUITES:
        known = ", ".join(sorted(_SUITES)) or "none (import sim.catalog to register the suites)"
        raise UnknownNameError(
            f"unknown suite {name!r}{did_you_mean(name, _SUITES)}; available: {known}"
        )
    return _SUITES[name]


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """A " (did you mean 'x'?)" hint naming the closest option, or '' when none is close."""
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
