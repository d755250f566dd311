"""Chunk stitching: one action per control step out of chunks that overlap and arrive late.

A chunk is computed from the observation of step `obs_step`; its action i is meant for step
`obs_step + i`. With asynchronous inference it arrives at a later step `now`, after the robot
kept executing the previous plan for `now - obs_step` steps. Those actions are committed (they
have been executed), so the new chunk's first `now - obs_step` actions are dropped: that is the
prefix freezing of real-time chunking (Black et al., 2025, "Real-Time Execution of Action
Chunking Flow Policies") as far as it can be done outside the sampler. What happens at the seam:

- "replace": the new chunk takes over at `now`.
- "freeze": the old plan's next `freeze_steps` actions are kept as well (for robots that buffer
  a few commands ahead, or to hide a seam behind a known delay), then the new chunk.
- "blend": a linear cross-fade over `blend_steps` from the old plan to the new chunk, so the
  command never jumps by more than the two plans' gap divided by (blend_steps + 1) per step.

Not done here: RTC's guided inpainting, which makes the sampler itself continue the frozen
prefix; the stitcher only sees finished chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STITCH_MODES = ("replace", "freeze", "blend")


@dataclass(frozen=True)
class StitchConfig:
    mode: str = "blend"
    freeze_steps: int = 2  # "freeze": old-plan actions kept after a chunk arrives
    blend_steps: int = 4  # "blend": steps of the cross-fade

    def __post_init__(self) -> None:
        if self.mode not in STITCH_MODES:
            raise ValueError(f"stitch mode must be one of {STITCH_MODES}, got {self.mode!r}")
        if self.freeze_steps < 0 or self.blend_steps < 0:
            raise ValueError(
                f"freeze_steps and blend_steps must be >= 0, got {self.freeze_steps}, {self.blend_steps}"
            )


class ChunkStitcher:
    """The plan: actions for consecutive control steps starting at `start`."""

    def __init__(self, config: StitchConfig | None = None) -> None:
        self.config = config or StitchConfig()
        self.start = 0
        self.actions = np.zeros((0, 0))  # (N, A): action for step start + i

    def remaining(self, step: int) -> int:
        """How many planned actions there are from `step` on."""
        return max(0, self.start + len(self.actions) - step)

    def action(self, step: int) -> np.ndarray | None:
        """The planned action (A,) for `step`, or None when the plan does not cover it."""
        index = step - self.start
        return self.actions[index].copy() if 0 <= index < len(self.actions) else None

    def add(self, chunk: np.ndarray, obs_step: int, now: int) -> int:
        """Stitch a chunk (H, A) computed at `obs_step` into the plan at step `now`.

        Returns how many of its actions were already stale (steps before `now`); a chunk that is
        all stale leaves the plan as it was.
        """
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2:
            raise ValueError(f"a chunk must be (H, A), got shape {chunk.shape}")
        if obs_step > now:
            raise ValueError(f"a chunk from step {obs_step} cannot arrive at earlier step {now}")
        stale = now - obs_step
        new = chunk[stale:].copy()  # (H - stale, A): actions for steps now, now + 1, ...
        if len(new) == 0:
            return len(chunk)
        # (K, A): the old plan from `now` on (empty before the first chunk)
        old = self.actions[max(0, now - self.start) :] if now >= self.start else self.actions[:0]
        if len(old) == 0:
            old = np.zeros((0, new.shape[1]))
        elif old.shape[1] != new.shape[1]:
            raise ValueError(f"a chunk of {new.shape[1]}-D actions after {old.shape[1]}-D ones")
        if self.config.mode == "freeze":
            overlap = min(self.config.freeze_steps, len(old), len(new))
            new[:overlap] = old[:overlap]
        elif self.config.mode == "blend":
            overlap = min(self.config.blend_steps, len(old), len(new))
            # (k, 1), from 1/(k+1) up to k/(k+1): the fade completes even when the old plan is short
            weight = (np.arange(1, overlap + 1) / (overlap + 1))[:, None]
            new[:overlap] = (1 - weight) * old[:overlap] + weight * new[:overlap]
        self.start, self.actions = now, new
        return stale
