"""Reference policies a learned one is measured against: the scripted expert (the ceiling) and
uniform random actions (chance). Both answer `infer` like `vla.policy.VLAPolicy`, so the eval
runner treats them exactly as it treats a checkpoint."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sim.suite_env import EXPERT_ACTION_KEY


class _ActOnlyPolicy:
    """`infer` for a policy without a chain of thought: chunks come from `chunks`."""

    def infer(
        self,
        observations: Sequence[Mapping[str, Any]],
        *,
        think: bool = False,
        reasoning: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        if think or reasoning is not None:
            raise ValueError(f"{type(self).__name__} does not reason; evaluate it act-only")
        actions = self.chunks(observations).astype(np.float32)  # (B, H, 7)
        return {"actions": actions, "reasoning": None, "timing": {}}

    def chunks(self, observations: Sequence[Mapping[str, Any]]) -> np.ndarray:
        raise NotImplementedError


class ExpertPolicy(_ActOnlyPolicy):
    """The scripted expert as a policy: replays the privileged action each observation carries
    when the envs were built with `oracle_expert=True` (chunks of one action). It runs through the
    same chunk loop as a learned policy, which is what the runner's tests check that loop with;
    `EnvRunner.run_expert` runs the same episodes without a round trip per step."""

    def chunks(self, observations: Sequence[Mapping[str, Any]]) -> np.ndarray:
        missing = [i for i, o in enumerate(observations) if EXPERT_ACTION_KEY not in o]
        if missing:
            raise KeyError(
                f"observations {missing} lack {EXPERT_ACTION_KEY!r}; build the EnvRunner with oracle_expert=True"
            )
        return np.stack([o[EXPERT_ACTION_KEY] for o in observations])[:, None]  # (B, 1, 7)


class RandomPolicy(_ActOnlyPolicy):
    """Uniform random actions in [-1, 1]: the chance level a trained policy must beat."""

    def __init__(self, horizon: int = 10, seed: int = 0) -> None:
        self.horizon = horizon
        self.rng = np.random.default_rng(seed)

    def chunks(self, observations: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, size=(len(observations), self.horizon, 7))
