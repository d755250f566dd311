"""The last layer between a policy and the motors: limits, rate limits and the safe action.

Whatever the model (or the network) produces, every command that leaves `SafetyLayer` is finite,
lies within [low, high] per dimension, and differs from the previous command by at most
`max_step_change` per dimension. The one exception to the rate limit is the safe action
itself: zero delta on every motion dimension (with OSC delta control: hold the current pose)
and the gripper held at its last command. Stopping is always allowed at once; easing into a
stop would keep the arm moving on stale intentions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SafetyConfig:
    """Per-dimension limits of a 7-D action: delta position (3), delta axis-angle (3), gripper."""

    low: tuple[float, ...] = (-1.0,) * 7
    high: tuple[float, ...] = (1.0,) * 7
    # The gripper may flip between open (-1) and closed (+1) in one step.
    max_step_change: tuple[float, ...] = (0.5,) * 6 + (2.0,)
    gripper_index: int | None = 6  # held (not zeroed) by the safe action; None: no gripper
    initial_gripper: float = -1.0  # the gripper command assumed before the first action (open)

    def __post_init__(self) -> None:
        low, high, change = (
            np.asarray(v, dtype=np.float64) for v in (self.low, self.high, self.max_step_change)
        )
        if not len(low) == len(high) == len(change):
            raise ValueError(
                f"low, high and max_step_change need one value per action dimension; got "
                f"{len(low)}, {len(high)} and {len(change)}"
            )
        if not (np.isfinite(low).all() and np.isfinite(high).all() and (low <= high).all()):
            raise ValueError(f"limits must be finite with low <= high; got low={low}, high={high}")
        if not (change > 0).all():
            raise ValueError(f"max_step_change must be > 0 per dimension, got {change}")
        motion = [i for i in range(len(low)) if i != self.gripper_index]
        if not ((low[motion] <= 0) & (high[motion] >= 0)).all():
            raise ValueError(
                f"the safe action (zero delta) must lie within the limits; got low={low}, high={high}"
            )
        if self.gripper_index is not None and not (
            low[self.gripper_index] <= self.initial_gripper <= high[self.gripper_index]
        ):
            raise ValueError(
                f"initial_gripper {self.initial_gripper} is outside the gripper limits "
                f"[{low[self.gripper_index]}, {high[self.gripper_index]}]"
            )


class SafetyLayer:
    def __init__(self, config: SafetyConfig | None = None) -> None:
        self.config = config or SafetyConfig()
        self.low = np.asarray(self.config.low, dtype=np.float64)
        self.high = np.asarray(self.config.high, dtype=np.float64)
        self.max_step_change = np.asarray(self.config.max_step_change, dtype=np.float64)
        self.reset()

    @property
    def action_dim(self) -> int:
        return len(self.low)

    def reset(self) -> None:
        """Forget the previous command: the next one starts from the safe action."""
        self.last = np.zeros(self.action_dim)
        if self.config.gripper_index is not None:
            self.last[self.config.gripper_index] = self.config.initial_gripper

    def safe(self) -> np.ndarray:
        """float64 (A,): zero motion, gripper held at its last command. Becomes the last command."""
        action = np.zeros(self.action_dim)
        if self.config.gripper_index is not None:
            action[self.config.gripper_index] = self.last[self.config.gripper_index]
        self.last = action
        return action.copy()

    def limit(self, action: np.ndarray) -> tuple[np.ndarray, bool]:
        """(command float64 (A,), whether `action` was usable).

        A non-finite or wrongly shaped action is replaced by the safe action (and reported as
        unusable): a NaN means the model or the link is broken, and no part of it can be trusted.
        """
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (self.action_dim,) or not np.isfinite(action).all():
            return self.safe(), False
        lower = np.maximum(self.low, self.last - self.max_step_change)  # (A,)
        upper = np.minimum(self.high, self.last + self.max_step_change)  # (A,)
        command = np.minimum(np.maximum(action, lower), upper)
        self.last = command
        return command.copy(), True


@dataclass(frozen=True)
class ActionRange:
    """The range a checkpoint's actions may take: its training actions' [min, max] per dimension,
    widened on each side by `margin` times the larger of the dimension's width and its
    normalization scale (a dimension that never varied in training would otherwise allow no
    deviation at all). The server refuses to serve a chunk outside it: a model that leaves its
    data's range this far is broken (a corrupted weight, wrong stats), not bold.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]

    @classmethod
    def from_stats(
        cls, minimum: np.ndarray, maximum: np.ndarray, scale: np.ndarray, margin: float
    ) -> ActionRange:
        minimum, maximum, scale = (
            np.asarray(v, dtype=np.float64).reshape(-1) for v in (minimum, maximum, scale)
        )
        widen = margin * np.maximum(maximum - minimum, scale)  # (A,)
        return cls(tuple((minimum - widen).tolist()), tuple((maximum + widen).tolist()))

    def to_dict(self) -> dict[str, list[float]]:
        return {"low": list(self.low), "high": list(self.high)}

    def violation(self, chunk: np.ndarray, where: str = "the model") -> str | None:
        """Why the (H, A) chunk leaves the range (the worst dimension), or None if it does not."""
        low, high = np.asarray(self.low), np.asarray(self.high)
        chunk = np.asarray(chunk, dtype=np.float64)
        excess = np.maximum(low - chunk, chunk - high)  # (H, A); > 0 outside
        if not (excess > 0).any():
            return None
        step, dim = np.unravel_index(int(np.argmax(excess)), excess.shape)
        return (
            f"{where} produced action[{step}][{dim}] = {chunk[step, dim]:.6g}, outside the "
            f"checkpoint's action range [{low[dim]:.6g}, {high[dim]:.6g}] for dimension {dim} "
            f"(training min/max widened by the server's action_range_margin); the checkpoint's "
            f"weights or stats.json are likely wrong"
        )
