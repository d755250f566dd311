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
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.config import VLAConfig
from vla.feature_cache import FeatureCache, uniform_schedule
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
        think: bool = False,
        reasoning_every: int = 1,
        feature_cache_every: int | None = None,
        noise_scale: float = 1.0,
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
        # Think mode: regenerate the chain every `reasoning_every` chunks, reuse it in between.
        self.think = think
        self.reasoning_every = reasoning_every
        # Feature caching: every expert block refreshes on denoising steps 0, k, 2k, ... and
        # reuses its output in between (None: every block is computed at every step).
        if feature_cache_every is not None and feature_cache_every < 1:
            raise ValueError(f"feature_cache_every must be >= 1 or None, got {feature_cache_every}")
        self.feature_cache_every = feature_cache_every
        # Sampling temperature: the initial noise is noise_scale * N(0, I). 1 samples the learned
        # action distribution; 0 integrates the flow from its mean, a deterministic policy that
        # does not replay the demonstrations' action noise (often steadier in closed loop with
        # little data; docs/results.md).
        if noise_scale < 0:
            raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
        self.noise_scale = noise_scale
        # Wall time of the last predict_chunk call's stages, in milliseconds (what eval reports).
        self.last_timings: dict[str, float] = {}
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
        # (step the chunk was predicted at, chunk), for temporal ensembling
        self._ensemble: list[tuple[int, np.ndarray]] = []
        self._step = 0
        self._chunks_predicted = 0
        self.last_reasoning: str | None = None

    @torch.no_grad()
    def predict_chunk(
        self,
        observations: Sequence[Mapping[str, Any]] | Mapping[str, Any],
        noise: torch.Tensor | None = None,
        think: bool = False,
        reasoning: Sequence[str] | None = None,
    ) -> np.ndarray | tuple[np.ndarray, list[str]]:
        """Action chunks (B, H, 7) in robot units for a batch of observations (one forward pass).

        `think=True` first generates the chain of thought token by token and returns
        `(chunks, thoughts)`. Passing `reasoning` (one text per observation) instead feeds given
        chains back as a forced prefix in a single parallel pass — reasoning reuse, no decoding —
        and also returns `(chunks, thoughts)`.
        """
        batch = [observations] if isinstance(observations, Mapping) else list(observations)
        started = time.perf_counter()
        inputs = self.processor.inputs(batch, self.device)
        timings = {"reasoning_ms": 0.0}
        thoughts: list[str] | None = None
        if reasoning is not None:
            if len(reasoning) != len(batch):
                raise ValueError(
                    f"got {len(reasoning)} reasoning texts for {len(batch)} observations"
                )
            ids, mask = self.processor.encode_reasoning(list(reasoning), self.device)
            inputs = replace(inputs, reasoning_ids=ids, reasoning_mask=mask)
            thoughts = list(reasoning)
        if think and reasoning is None:
            # Decoding grows the instruction's prefix cache token by token, so prefix encoding
            # and reasoning are one stage here, reported as reasoning.
            timings["prefix_ms"] = 0.0
            with _Stopwatch(timings, "reasoning_ms", self.device):
                eos = self.processor.tokenizer.eos_token_id
                cache, ids, mask = self.model.generate_reasoning(inputs, eos)
                thoughts = self.processor.decode_reasoning(ids, mask)
        else:
            with _Stopwatch(timings, "prefix_ms", self.device):
                cache = self.model.encode_prefix(inputs)
        feature_cache = self._feature_cache()
        if noise is None and self.noise_scale != 1.0:
            shape = (len(batch), self.config.action_horizon, self.config.action_dim)
            noise = self.noise_scale * torch.randn(shape, device=self.device)
        with _Stopwatch(timings, "denoise_ms", self.device):
            normalized = self.model.sample_actions(
                inputs, noise=noise, cache=cache, feature_cache=feature_cache
            )
        chunks = self.processor.actions(normalized)
        timings["total_ms"] = (time.perf_counter() - started) * 1e3
        if feature_cache is not None:
            evaluated = feature_cache.computed + feature_cache.reused
            timings["feature_reuse"] = feature_cache.reused / max(1, evaluated)
        self.last_timings = timings
        if thoughts is None:
            return chunks
        return chunks, thoughts

    def _feature_cache(self) -> FeatureCache | None:
        if self.feature_cache_every is None:
            return None
        schedule = uniform_schedule(
            self.model.geometry.num_layers,
            self.config.num_inference_steps,
            self.feature_cache_every,
        )
        return FeatureCache(schedule)

    def select_action(self, observation: Mapping[str, Any]) -> np.ndarray:
        """The next action float32[7] for one environment."""
        if self.temporal_ensemble is not None:
            return self._ensembled_action(observation)
        if not self._queue:
            chunk = self._next_chunk(observation)
            self._queue.extend(chunk[: self.n_action_steps])
        return self._queue.popleft()

    def _next_chunk(self, observation: Mapping[str, Any]) -> np.ndarray:
        if not self.think:
            return self.predict_chunk([observation])[0]
        regenerate = (
            self.last_reasoning is None or self._chunks_predicted % self.reasoning_every == 0
        )
        if regenerate:
            chunks, thoughts = self.predict_chunk([observation], think=True)
        else:
            chunks, thoughts = self.predict_chunk([observation], reasoning=[self.last_reasoning])
        self._chunks_predicted += 1
        self.last_reasoning = thoughts[0]
        return chunks[0]

    def _ensembled_action(self, observation: Mapping[str, Any]) -> np.ndarray:
        chunk = self._next_chunk(observation)
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


class _Stopwatch:
    """Adds a block's wall time in ms to `timings[key]`; waits for queued GPU work first so the
    time lands in the stage that caused it."""

    def __init__(self, timings: dict[str, float], key: str, device: torch.device) -> None:
        self.timings, self.key, self.device = timings, key, device

    def __enter__(self) -> None:
        self._sync()
        self.started = time.perf_counter()

    def __exit__(self, *exc_info: object) -> None:
        self._sync()
        elapsed = (time.perf_counter() - self.started) * 1e3
        self.timings[self.key] = self.timings.get(self.key, 0.0) + elapsed

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
