"""Chunk → per-step actions: the one home of receding horizon, temporal ensembling and the
reasoning-reuse schedule.

A policy predicts a chunk of H future actions per call. How those become one action per control
step is a separate decision from how the chunk was computed, and evaluation, `VLAPolicy
.select_action`, the training-time evaluator and the robot controller must all make it the same
way, or a success rate measured in simulation says nothing about the robot. So it lives here, in
numpy only (a robot computer runs it without torch):

- receding horizon: the first `n_action_steps` actions of each chunk are executed, then the
  policy looks again at the newest observation (default: half the chunk, `default_n_action_steps`);
- temporal ensembling (ACT): a chunk is predicted every step, and the step's action is the
  average of every chunk still covering it, weighted exp(-k i) with i = 0 for the oldest;
- think mode: the chain of thought is generated for the first chunk and every `reasoning_every`
  chunks after; in between the last chain is fed back unchanged (reasoning reuse, no decoding).

One `ActionChunker` serves one episode of one environment (or robot): `reset()` between episodes.
The caller asks `next_call()` which kind of policy call is due (None while actions are queued),
makes it (batching many chunkers' calls into one, as the eval runner does), hands the chunk back
with `add`, and executes `pop_actions()` (all actions due before the next look) or `pop_action()`
(one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

CallKind = Literal["act", "think", "reuse"]
_NOTHING_QUEUED = "no actions queued: call the policy first (next_call() says which call)"


def default_n_action_steps(action_horizon: int) -> int:
    """Actions executed per chunk when nobody says otherwise: half the chunk (the second half is
    the least reliable part of an open-loop plan; executing it all reacts too late)."""
    return max(1, action_horizon // 2)


@dataclass(frozen=True)
class ChunkerConfig:
    n_action_steps: int | None = None  # None: default_n_action_steps(chunk length)
    temporal_ensemble: float | None = None  # k of the exp(-k i) weights; None: receding horizon
    think: bool = False
    reasoning_every: int = 1  # think mode: regenerate the chain every this many chunks

    def __post_init__(self) -> None:
        if self.n_action_steps is not None and (
            isinstance(self.n_action_steps, bool) or self.n_action_steps < 1
        ):
            raise ValueError(f"n_action_steps must be an integer >= 1, got {self.n_action_steps!r}")
        if self.temporal_ensemble is not None and not (
            np.isfinite(self.temporal_ensemble) and self.temporal_ensemble >= 0
        ):
            raise ValueError(
                f"temporal_ensemble must be a finite k >= 0 (weights exp(-k i)), got {self.temporal_ensemble!r}"
            )
        if isinstance(self.reasoning_every, bool) or self.reasoning_every < 1:
            raise ValueError(
                f"reasoning_every must be an integer >= 1, got {self.reasoning_every!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ActionChunker:
    """Turns the chunks of one episode into the actions to execute (see the module docstring)."""

    def __init__(self, config: ChunkerConfig | None = None) -> None:
        self.config = config or ChunkerConfig()
        self.reset()

    def reset(self) -> None:
        """Forget the episode: queued actions, ensembled chunks and the chain of thought."""
        self._queue: list[np.ndarray] = []  # (A,) actions still to execute, in order
        self._ensemble: list[tuple[int, np.ndarray]] = []  # (step predicted at, (H, A) chunk)
        self._step = 0  # actions handed out so far this episode
        self._chunks = 0  # chunks received so far this episode
        self.reasoning: str | None = None  # the chain the current actions were planned with

    def next_call(self) -> CallKind | None:
        """The policy call due now, or None while queued actions remain (receding horizon).

        "think" generates a new chain, "reuse" feeds `self.reasoning` back, "act" thinks not at all.
        """
        if self.config.temporal_ensemble is None and self._queue:
            return None
        if not self.config.think:
            return "act"
        due = self.reasoning is None or self._chunks % self.config.reasoning_every == 0
        return "think" if due else "reuse"

    def add(self, chunk: np.ndarray, reasoning: str | None = None) -> None:
        """Take a chunk (H, A) predicted from the current observation (and the chain it was
        planned with, in think mode). Action values are not judged here: the env (or on a robot
        the safety layer) refuses what it cannot execute."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 2 or chunk.shape[0] < 1:
            raise ValueError(f"a chunk must be (horizon >= 1, action_dim), got shape {chunk.shape}")
        self._chunks += 1
        if reasoning is not None:
            self.reasoning = reasoning
        if self.config.temporal_ensemble is not None:
            self._ensemble.append((self._step, chunk))
            return
        horizon = chunk.shape[0]
        n_action_steps = self.config.n_action_steps or default_n_action_steps(horizon)
        self._queue.extend(chunk[: min(n_action_steps, horizon)])

    def pop_actions(self) -> np.ndarray:
        """Every action (n, A) due before the policy looks again: the queued rest of the chunk,
        or the one ensembled action. Executing them in one go lets an env run them without a
        round trip per step."""
        if self.config.temporal_ensemble is not None:
            return self.pop_action()[None]
        if not self._queue:
            raise RuntimeError(_NOTHING_QUEUED)
        actions = np.stack(self._queue)
        self._step += len(self._queue)
        self._queue.clear()
        return actions

    def pop_action(self) -> np.ndarray:
        """The next action (A,)."""
        if self.config.temporal_ensemble is None:
            if not self._queue:
                raise RuntimeError(_NOTHING_QUEUED)
            self._step += 1
            return self._queue.pop(0)
        step = self._step
        self._ensemble = [(start, c) for start, c in self._ensemble if step - start < len(c)]
        if not self._ensemble:
            raise RuntimeError(f"no chunk covers step {step}: call the policy first")
        actions = np.stack([chunk[step - start] for start, chunk in self._ensemble])  # oldest first
        weights = np.exp(-self.config.temporal_ensemble * np.arange(len(actions)))  # float64
        self._step += 1
        return (weights[:, None] * actions).sum(0).astype(np.float32) / np.float32(weights.sum())
