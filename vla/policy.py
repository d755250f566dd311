"""`VLAPolicy`: what evaluation, serving and users call (DESIGN.md policy API, openpi's shape).

    policy = VLAPolicy.from_pretrained(path, device="cpu")
    out = policy.infer([obs1, obs2])              # one stateless call, batched across environments
    out["actions"]                                # (B, H, 7) float32 in robot units
    out = policy.infer([obs1], think=True)        # out["reasoning"]: one chain of thought per item
    policy.reset(); action = policy.select_action(obs)   # float32[7], one env, step by step

`infer` returns the same dict the server sends: {"actions", "reasoning", "timing"}. Turning chunks
into per-step actions (receding horizon, temporal ensembling, reasoning reuse) is
`vla.robot.chunker.ActionChunker`'s job; `select_action` is `infer` plus one chunker.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.config import VLAConfig
from vla.fast_path import FastSampler
from vla.feature_cache import FeatureCache, uniform_schedule
from vla.model import VLAModel
from vla.processor import Processor
from vla.robot.chunker import ActionChunker, ChunkerConfig


class ReasoningUnavailableError(ValueError):
    """Thinking was asked of a checkpoint that never learned to reason: its decoder would emit
    fluent garbage ("cube cube cube ..."), so the request is refused instead."""


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
        name: str = "this policy",
        reasoning_trained: bool | None = None,
        fast_path: str | None = None,
    ) -> None:
        self.model = model.eval().to(device)
        self.processor = processor
        self.config: VLAConfig = model.config
        self.device = torch.device(device)
        self.name = name  # what errors call it: the checkpoint path when loaded from one
        # Recorded at export (None: unknown, e.g. a model built in memory or an older checkpoint).
        self.reasoning_trained = reasoning_trained
        horizon = self.config.action_horizon
        if n_action_steps is not None and not 1 <= n_action_steps <= horizon:
            raise ValueError(
                f"n_action_steps must be in 1..{horizon} (the action horizon), got {n_action_steps}"
            )
        # How select_action turns chunks into actions; eval and serving use their own chunkers.
        self.chunking = ChunkerConfig(
            n_action_steps=n_action_steps,
            temporal_ensemble=temporal_ensemble,
            think=think,
            reasoning_every=reasoning_every,
        )
        if think:
            self._require_reasoning()
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
        # The inference fast path (vla/fast_path.py: static shapes, precomputed time rows, CUDA
        # graphs, torch.compile); None runs the eager reference, `VLAModel.sample_actions`.
        if fast_path is not None and feature_cache_every is not None:
            raise ValueError(
                "fast_path and feature_cache_every do not combine: the fast path computes every "
                "expert block at every step; choose one"
            )
        self.fast_path = fast_path
        self._fast_sampler = None if fast_path is None else FastSampler(self.model, fast_path)
        self.reset()

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", **options: Any) -> VLAPolicy:
        """Load a checkpoint directory (config.json, model.safetensors, stats.json, tokenizer/)."""
        from vla.checkpoint import load_checkpoint

        loaded = load_checkpoint(Path(path), device=device)
        processor = Processor.from_checkpoint(loaded)  # settings, stats, tokenizer, camera spec
        options.setdefault("name", f"checkpoint {path}")
        options.setdefault("reasoning_trained", loaded.reasoning_trained)
        return cls(loaded.model, processor, device=device, **options)

    # ------------------------------------------------------------------ the stateless call
    @property
    def can_reason(self) -> bool:
        """Whether the model was trained to write a chain of thought: not when every reasoning
        target was dropped (reasoning_dropout 1.0, act-only training) or, as the checkpoint
        records, its dataset had no reasoning labels."""
        return (
            self.processor.settings.reasoning_dropout < 1.0 and self.reasoning_trained is not False
        )

    def _require_reasoning(self) -> None:
        if self.can_reason:
            return
        dropout = self.processor.settings.reasoning_dropout
        why = (
            f"it was trained act-only (processor reasoning_dropout = {dropout}, so it never saw "
            "a reasoning target)"
            if dropout >= 1.0
            else "its training data had no reasoning labels (config.json reasoning_trained = false)"
        )
        raise ReasoningUnavailableError(
            f"{self.name} cannot think: {why}. Run it without think/reasoning, or train with "
            "reasoning labels and processor.reasoning_dropout < 1 (e.g. 0.5)."
        )

    @torch.no_grad()
    def infer(
        self,
        observations: Sequence[Mapping[str, Any]] | Mapping[str, Any],
        *,
        think: bool = False,
        reasoning: Sequence[str] | None = None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """Action chunks for a batch of observations, in one forward pass.

        Returns {"actions": float32 (B, H, A) in robot units, "reasoning": one text per
        observation or None, "timing": wall ms per stage}. `think=True` first generates the
        chain of thought token by token. `reasoning` (one text per observation) instead feeds
        given chains back as a forced prefix in one parallel pass: reasoning reuse, no decoding.
        `noise` (B, H, A) fixes the sampler's initial noise (reproducible calls).
        """
        batch = [observations] if isinstance(observations, Mapping) else list(observations)
        if think or reasoning is not None:
            self._require_reasoning()
        started = time.perf_counter()
        inputs = self.processor.inputs(batch, self.device)
        timing = {"reasoning_ms": 0.0}
        thoughts: list[str] | None = None
        if reasoning is not None:
            if len(reasoning) != len(batch):
                raise ValueError(
                    f"got {len(reasoning)} reasoning texts for {len(batch)} observations"
                )
            ids, mask = self.processor.encode_reasoning(list(reasoning), self.device)
            inputs = replace(inputs, reasoning_ids=ids, reasoning_mask=mask)
            thoughts = list(reasoning)
        noise = self._initial_noise(len(batch)) if noise is None else noise
        if self._fast_sampler is not None and not think and reasoning is None:
            # The whole chunk is one call (one CUDA-graph replay in graph modes), so prefix and
            # denoising are one stage here, reported as denoise.
            timing["prefix_ms"] = 0.0
            with _Stopwatch(timing, "denoise_ms", self.device):
                normalized = self._fast_sampler.sample(inputs, noise)
            return self._finish(normalized, thoughts, timing, started, None)
        if think and reasoning is None:
            # Decoding grows the instruction's prefix cache token by token, so prefix encoding
            # and reasoning are one stage here, reported as reasoning.
            timing["prefix_ms"] = 0.0
            with _Stopwatch(timing, "reasoning_ms", self.device):
                eos = self.processor.tokenizer.eos_token_id
                cache, ids, mask = self.model.generate_reasoning(inputs, eos)
                thoughts = self.processor.decode_reasoning(ids, mask)
        else:
            with _Stopwatch(timing, "prefix_ms", self.device):
                cache = self.model.encode_prefix(inputs)
        feature_cache = self._feature_cache()
        with _Stopwatch(timing, "denoise_ms", self.device):
            if self._fast_sampler is not None:  # a chain of varying length: no graph
                normalized = self._fast_sampler.denoise(cache, inputs.state, noise)
            else:
                normalized = self.model.sample_actions(
                    inputs, noise=noise, cache=cache, feature_cache=feature_cache
                )
        return self._finish(normalized, thoughts, timing, started, feature_cache)

    def _initial_noise(self, batch: int) -> torch.Tensor:
        """noise_scale * N(0, I) of shape (B, H, A), in the model's dtype."""
        shape = (batch, self.config.action_horizon, self.config.action_dim)
        dtype = next(self.model.parameters()).dtype
        return self.noise_scale * torch.randn(shape, device=self.device, dtype=dtype)

    def _finish(
        self,
        normalized: torch.Tensor,
        thoughts: list[str] | None,
        timing: dict[str, float],
        started: float,
        feature_cache: FeatureCache | None,
    ) -> dict[str, Any]:
        actions = self.processor.actions(normalized)  # (B, H, A)
        timing["total_ms"] = (time.perf_counter() - started) * 1e3
        if feature_cache is not None:
            evaluated = feature_cache.computed + feature_cache.reused
            timing["feature_reuse"] = feature_cache.reused / max(1, evaluated)
        return {"actions": actions, "reasoning": thoughts, "timing": timing}

    def _feature_cache(self) -> FeatureCache | None:
        if self.feature_cache_every is None:
            return None
        schedule = uniform_schedule(
            self.model.geometry.num_layers,
            self.config.num_inference_steps,
            self.feature_cache_every,
        )
        return FeatureCache(schedule)

    # ------------------------------------------------------------------ one env, step by step
    def new_chunker(self) -> ActionChunker:
        """A chunker with this policy's rollout settings, for one episode (the eval runner makes
        one per env with it)."""
        return ActionChunker(self.chunking)

    def reset(self) -> None:
        """Forget queued actions and the chain of thought (call at the start of every episode)."""
        self.chunker = self.new_chunker()

    @property
    def last_reasoning(self) -> str | None:
        """The chain of thought the current actions were planned with (think mode)."""
        return self.chunker.reasoning

    def select_action(self, observation: Mapping[str, Any]) -> np.ndarray:
        """The next action float32[7] for one environment; predicts a chunk when one is due."""
        kind = self.chunker.next_call()
        if kind is not None:
            out = self.infer(
                [observation],
                think=kind == "think",
                reasoning=[self.chunker.reasoning] if kind == "reuse" else None,
            )
            thoughts = out["reasoning"]
            self.chunker.add(out["actions"][0], thoughts[0] if thoughts else None)
        return self.chunker.pop_action()


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
