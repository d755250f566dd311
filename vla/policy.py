"""`VLAPolicy`: what evaluation, serving and users call (DESIGN.md policy API).

    policy = VLAPolicy.from_pretrained(path, device="cpu")
    policy.reset()
    action = policy.select_action(obs)          # np.float32[7], from a queue of predicted actions
    chunk = policy.predict_chunk([obs1, obs2])  # (B, H, 7), batched across environments

Receding horizon: `select_action` predicts a chunk of H actions, executes the first
`n_action_steps` of it, then predicts again from the newest observation. With
`temporal_ensemble=k` it instead predicts every step and averages, for each step, every chunk
that covers it with weights exp(-k * i), i = 0 for the oldest (ACT's temporal ensembling).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.config import VLAConfig
from vla.model import VLAModel
from vla.processor import Processor, ProcessorConfig


class VLAPolicy:
    def __init__(
        self,
        model: VLAModel,
        processor: Processor,
        n_action_steps: int | None = None,
        temporal_ensemble: float | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.model = model.eval().to(device)
        self.processor = processor
        self.config: VLAConfig = model.config
        self.device = torch.device(device)
        horizon = self.config.action_horizon
        self.n_action_steps = n_action_steps or max(1, horizon // 2)
        if not 1 <= self.n_action_steps <= horizon:
            raise ValueError(
                f"n_action_steps must be in 1..{horizon} (the action horizon), got {self.n_action_steps}"
            )
        self.temporal_ensemble = temporal_ensemble
        self.reset()

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", **options: Any) -> VLAPolicy:
        """Load a checkpoint directory (config.json, model.safetensors, stats.json, tokenizer/)."""
        from vla.checkpoint import load_checkpoint
        from vla.tokenizer import load_tokenizer

        loaded = load_checkpoint(Path(path), device=device)
        if loaded.tokenizer_dir is None:
            raise FileNotFoundError(f"{path}: the checkpoint has no tokenizer/ directory")
        processor = Processor(
            loaded.config,
            ProcessorConfig.from_dict(loaded.processor),
            loaded.stats,
            load_tokenizer(loaded.tokenizer_dir),
        )
        return cls(loaded.model, processor, device=device, **options)

    def reset(self) -> None:
        """Forget queued actions (call at the start of every episode)."""
        self._queue: collections.deque[np.ndarray] = collections.deque()
        self._ensemble: list[
            tuple[int, np.ndarray]
        ] = []  # (step the chunk was predicted at, chunk)
        self._step = 0

    @torch.no_grad()
    def predict_chunk(
        self,
        observations: Sequence[Mapping[str, Any]] | Mapping[str, Any],
        noise: torch.Tensor | None = None,
    ) -> np.ndarray:
        """Action chunks (B, H, 7) in robot units for a batch of observations (one forward pass)."""
        batch = [observations] if isinstance(observations, Mapping) else list(observations)
        inputs = self.processor.inputs(batch, self.device)
        normalized = self.model.sample_actions(inputs, noise=noise)
        return self.processor.actions(normalized)

    def select_action(self, observation: Mapping[str, Any]) -> np.ndarray:
        """The next action float32[7] for one environment."""
        if self.temporal_ensemble is not None:
            return self._ensembled_action(observation)
        if not self._queue:
            chunk = self.predict_chunk([observation])[0]
            self._queue.extend(chunk[: self.n_action_steps])
        return self._queue.popleft()

    def _ensembled_action(self, observation: Mapping[str, Any]) -> np.ndarray:
        chunk = self.predict_chunk([observation])[0]
        self._ensemble.append((self._step, chunk))
        horizon = self.config.action_horizon
        self._ensemble = [(start, c) for start, c in self._ensemble if self._step - start < horizon]
        actions = np.stack([c[self._step - start] for start, c in self._ensemble])  # oldest first
        # ACT's weighting: exp(-k * i) with i = 0 for the oldest chunk still covering this step.
        weights = np.exp(-self.temporal_ensemble * np.arange(len(actions), dtype=np.float64))
        self._step += 1
        return (weights[:, None] * actions).sum(0).astype(np.float32) / weights.sum().astype(
            np.float32
        )
