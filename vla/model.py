"""`VLAModel`: backbone prefix + action expert, trained with flow matching (or diffusion) and,
optionally, to write a chain of thought before acting.

Interfaces (openpi's): `compute_loss(...)` for training and `sample_actions(...)` for inference.
Both take tensors already normalized by the policy's input transforms (vla/processor.py): images
(B, 3, H, W) float in [-1, 1] per camera, instruction token ids with a mask, state (B, 8),
actions (B, H, 7), and reasoning token ids when thinking. Robot and dataset specifics stay out of
this module.

The prefix is [image tokens of each camera | instruction | reasoning]. Images and instruction
attend both ways; reasoning is causal (it is generated); the expert's suffix attends to all of it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from vla.action_expert import ActionExpert
from vla.attention import PrefixCache, decode_token, encode_prefix, joint_forward, suffix_forward
from vla.backbone import build_backbone
from vla.config import VLAConfig
from vla.feature_cache import FeatureCache, all_blocks


@dataclass
class ModelInputs:
    """One batch of normalized inputs."""

    images: dict[str, torch.Tensor]  # camera -> (B, 3, H, W) float in [-1, 1]
    text_ids: torch.Tensor  # (B, L) long
    text_mask: torch.Tensor  # (B, L) bool
    state: torch.Tensor  # (B, state_dim)
    # Reasoning tokens after the instruction (training targets, or a chain fed back at inference
    # for reuse), right-padded and ending with EOS; None when acting without thinking.
    reasoning_ids: torch.Tensor | None = None  # (B, R) long
    reasoning_mask: torch.Tensor | None = None  # (B, R) bool
    # Training: which items' chains are also reasoning targets (None: all). The others are
    # stale chains, read by the expert as context only (ProcessorConfig.stale_chain).
    reasoning_loss_rows: torch.Tensor | None = None  # (B,) bool
    # A frozen encoder's features of some cameras, computed once per dataset frame
    # (vla/training/frozen_features.py); such a camera's entry in `images` is not read.
    image_features: dict[str, torch.Tensor] | None = None  # camera -> (B, N, C)

    def without_reasoning(self) -> ModelInputs:
        return replace(self, reasoning_ids=None, reasoning_mask=None, reasoning_loss_rows=None)

    def select(self, rows: torch.Tensor) -> ModelInputs:
        """The items `rows` (K,) of the batch; reasoning trimmed to the longest selected chain,
        and dropped when none of them has one."""
        reasoning_ids = reasoning_mask = None
        if self.reasoning_mask is not None:
            mask = self.reasoning_mask[rows]  # (K, R)
            width = int(mask.sum(dim=1).max()) if len(rows) else 0
            if width > 0:
                reasoning_ids, reasoning_mask = self.reasoning_ids[rows, :width], mask[:, :width]
        return ModelInputs(
            images={camera: pixels[rows] for camera, pixels in self.images.items()},
            text_ids=self.text_ids[rows],
            text_mask=self.text_mask[rows],
            state=self.state[rows],
            reasoning_ids=reasoning_ids,
            reasoning_mask=reasoning_mask,
            reasoning_loss_rows=None
            if self.reasoning_loss_rows is None or reasoning_ids is None
            else self.reasoning_loss_rows[rows],
            image_features=None
            if self.image_features is None
            else {camera: features[rows] for camera, features in self.image_features.items()},
        )

    def reasoning_groups(self) -> list[torch.Tensor]:
        """Row indices of the items with a chain and of those without, each group non-empty.

        Why: under reasoning dropout about half a training batch acts without thinking, yet a
        single pass pads every item to the longest chain (~100 tokens beside ~60 of images and
        instruction). Two passes, one per group, skip that padding; the loss is the same.
        """
        batch = self.state.shape[0]
        if self.reasoning_mask is None:
            return [torch.arange(batch, device=self.state.device)]
        thinking = self.reasoning_mask.any(dim=1)  # (B,)
        groups = [torch.nonzero(thinking).flatten(), torch.nonzero(~thinking).flatten()]
        return [rows for rows in groups if len(rows)]

    @classmethod
    def fake(
        cls,
        config: VLAConfig,
        batch: int = 3,
        text_lengths: tuple[int, ...] = (10, 24, 5),
        seed: int = 0,
    ) -> ModelInputs:
        """Random inputs shaped by the config, instructions of different lengths (padded): what
        tests and benchmarks feed a model without a dataset or a tokenizer."""
        generator = torch.Generator().manual_seed(seed)
        size, length = config.image_size, config.max_text_tokens
        if len(text_lengths) < batch:
            raise ValueError(f"give one text length per item: {batch} items, {text_lengths}")
        return cls(
            images={
                camera: torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
                for camera in config.cameras
            },  # camera -> (B, 3, S, S)
            text_ids=torch.randint(0, 500, (batch, length), generator=generator),  # (B, L)
            text_mask=torch.arange(length)[None] < torch.tensor(text_lengths[:batch])[:, None],
            state=torch.randn(batch, config.state_dim, generator=generator),  # (B, state_dim)
        )


class VLAModel(nn.Module):
    def __init__(self, config: VLAConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config)
        self.geometry = self.backbone.geometry
        self.expert = ActionExpert(config, self.geometry)
        if config.objective == "diffusion":
            from diffusers import DDIMScheduler, DDPMScheduler

            scheduler_class = (
                DDIMScheduler if config.diffusion_scheduler == "ddim" else DDPMScheduler
            )
            self.scheduler = scheduler_class(
                num_train_timesteps=config.diffusion_train_steps,
                beta_schedule="squaredcos_cap_v2",
                clip_sample=False,
            )

    @classmethod
    def build(
        cls, config: VLAConfig, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> VLAModel:
        """The model created directly on `device` in `dtype`: no fp32 copy on the CPU first,
        which for the pi0-size config (3.2B parameters) would need 13 GB before converting."""
        default = torch.get_default_dtype()
        try:
            if dtype is not None:
                torch.set_default_dtype(dtype)
            with torch.device(device):
                return cls(config)
        finally:
            torch.set_default_dtype(default)

    # ------------------------------------------------------------------ prefix
    def embed_prefix(self, inputs: ModelInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prefix tokens (B, P, D), the mask of real tokens (B, P) and of causal ones (B, P)."""
        tokens, masks = [], []
        features = inputs.image_features or {}
        for camera in self.config.cameras:
            if camera in features:
                image_tokens = self.backbone.project_image_features(features[camera])
            else:
                image_tokens = self.backbone.embed_images(inputs.images[camera])
            tokens.append(image_tokens)
            masks.append(
                torch.ones(image_tokens.shape[:2], dtype=torch.bool, device=image_tokens.device)
            )
        tokens.append(self.backbone.embed_text(inputs.text_ids))
        masks.append(inputs.text_mask.bool())
        bidirectional = sum(mask.shape[1] for mask in masks)
        if inputs.reasoning_ids is not None and inputs.reasoning_ids.shape[1] > 0:
            tokens.append(self.backbone.embed_text(inputs.reasoning_ids))
            masks.append(inputs.reasoning_mask.bool())
        mask = torch.cat(masks, dim=1)
        causal = torch.zeros_like(mask)
        causal[:, bidirectional:] = True
        return torch.cat(tokens, dim=1), mask, causal

    def encode_prefix(self, inputs: ModelInputs) -> PrefixCache:
        """KV cache of the prefix; a given reasoning chain is encoded in the same single pass."""
        prefix, mask, causal = self.embed_prefix(inputs)
        cache, _ = encode_prefix(
            self.backbone.layers, self.backbone.rotary_emb, self.geometry, prefix, mask, causal
        )
        return cache

    # ------------------------------------------------------------------ action prediction
    def predict_with_cache(
        self,
        cache: PrefixCache,
        state: torch.Tensor,
        noisy_actions: torch.Tensor,
        time: torch.Tensor,
        feature_cache: FeatureCache | None = None,
    ) -> torch.Tensor:
        """The expert's prediction (velocity or noise) (B, H, A) for one denoising step."""
        suffix = self.expert.embed_suffix(state, noisy_actions, time)
        hidden = suffix_forward(
            self.expert.layers,
            self.backbone.rotary_emb,
            self.geometry,
            suffix,
            cache,
            feature_cache,
        )
        return self.expert.readout(hidden)

    def predict_joint(
        self, inputs: ModelInputs, noisy_actions: torch.Tensor, time: torch.Tensor
    ) -> torch.Tensor:
        """The same prediction computed without a cache, prefix and suffix in one pass."""
        return self._joint(inputs, noisy_actions, time)[1]

    def _joint(
        self, inputs: ModelInputs, noisy_actions: torch.Tensor, time: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        prefix, mask, causal = self.embed_prefix(inputs)
        suffix = self.expert.embed_suffix(inputs.state, noisy_actions, time)
        prefix_hidden, suffix_hidden = joint_forward(
            self.backbone.layers,
            self.expert.layers,
            self.backbone.rotary_emb,
            self.geometry,
            prefix,
            mask,
            suffix,
            causal,
            activation_checkpointing=self.config.activation_checkpointing,
        )
        return prefix_hidden, self.expert.readout(suffix_hidden)

    # ------------------------------------------------------------------ training
    def compute_loss(
        self,
        inputs: ModelInputs,
        actions: torch.Tensor,
        action_is_pad: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
        split_reasoning: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Masked MSE of the expert's prediction (padded chunk positions do not count), plus the
        cross-entropy of the reasoning tokens when the batch has any.

        `split_reasoning` runs items with and without a chain as two passes
        (`ModelInputs.reasoning_groups`); False pads all into one (the reference it must equal).
        """
        batch = actions.shape[0]
        noise = torch.randn_like(actions) if noise is None else noise
        if self.config.objective == "flow":
            if time is None:
                a, b = self.config.flow_time_beta
                time = torch.distributions.Beta(a, b).sample((batch,)).to(actions) * 0.999 + 0.001
            noisy = time[:, None, None] * noise + (1 - time[:, None, None]) * actions
            target = noise - actions
            model_time = time
        else:
            if time is None:
                time = torch.randint(
                    0, self.config.diffusion_train_steps, (batch,), device=actions.device
                )
            noisy = self.scheduler.add_noise(actions, noise, time.long())
            target = noise
            model_time = time.to(actions.dtype) / self.config.diffusion_train_steps
        valid = torch.ones(actions.shape[:2], dtype=actions.dtype, device=actions.device)
        if action_is_pad is not None:
            valid = (~action_is_pad).to(valid)  # (B, H)
        action_sum = reasoning_sum = reasoning_tokens = torch.zeros((), device=actions.device)
        groups = inputs.reasoning_groups() if split_reasoning else [None]
        for rows in groups:  # the thinking items, then the others: sums, normalized once below
            group = inputs if rows is None else inputs.select(rows)
            pick = slice(None) if rows is None else rows
            prefix_hidden, prediction = self._joint(group, noisy[pick], model_time[pick])
            per_step = ((prediction - target[pick]) ** 2).mean(dim=-1)  # (K, H)
            action_sum = action_sum + (per_step * valid[pick]).sum()
            if group.reasoning_ids is not None and group.reasoning_mask.any():
                logits = self.reasoning_logits(group, prefix_hidden)  # (K, R, vocab)
                token_loss = F.cross_entropy(
                    logits.flatten(0, 1), group.reasoning_ids.flatten(), reduction="none"
                )
                targets = group.reasoning_mask  # (K, R)
                if group.reasoning_loss_rows is not None:  # stale chains: context, not targets
                    targets = targets & group.reasoning_loss_rows[:, None]
                weights = targets.flatten().to(token_loss)
                reasoning_sum = reasoning_sum + (token_loss * weights).sum()
                reasoning_tokens = reasoning_tokens + weights.sum()
        action_loss = action_sum / valid.sum().clamp(min=1)
        losses = {"loss": action_loss, "action_loss": action_loss}
        if reasoning_tokens > 0:
            reasoning_loss = reasoning_sum / reasoning_tokens
            losses["reasoning_loss"] = reasoning_loss
            losses["loss"] = action_loss + self.config.reasoning_loss_weight * reasoning_loss
        return losses

    def reasoning_logits(self, inputs: ModelInputs, prefix_hidden: torch.Tensor) -> torch.Tensor:
        """Logits (B, R, vocab) for reasoning token k, read from the token before it (the last
        real instruction token for k = 0)."""
        reasoning_length = inputs.reasoning_ids.shape[1]
        reasoning_start = prefix_hidden.shape[1] - reasoning_length
        text_start = reasoning_start - inputs.text_ids.shape[1]
        before = reasoning_start - 1 + torch.arange(reasoning_length, device=prefix_hidden.device)
        before = before[None].repeat(prefix_hidden.shape[0], 1)  # (B, R)
        before[:, 0] = text_start + inputs.text_mask.long().sum(dim=1) - 1
        gathered = torch.gather(
            prefix_hidden, 1, before[..., None].expand(-1, -1, prefix_hidden.shape[2])
        )
        return self.backbone.logits(self.backbone.final_norm(gathered))

    # ------------------------------------------------------------------ chain of thought
    @torch.no_grad()
    def generate_reasoning(
        self, inputs: ModelInputs, eos_token_id: int
    ) -> tuple[PrefixCache, torch.Tensor, torch.Tensor]:
        """Greedy decoding of the reasoning after the instruction, token by token with a KV cache.

        Returns the prefix cache grown by the generated tokens (what the expert then attends to),
        the generated ids (B, R) and their mask (B, R): tokens up to and including EOS.
        """
        prefix, mask, causal = self.embed_prefix(inputs.without_reasoning())
        cache, hidden = encode_prefix(
            self.backbone.layers, self.backbone.rotary_emb, self.geometry, prefix, mask, causal
        )
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        current = hidden[rows, cache.lengths - 1][:, None]  # the last real instruction token
        running = torch.ones(hidden.shape[0], dtype=torch.bool, device=hidden.device)
        generated, masks = [], []
        for _ in range(self.config.max_reasoning_tokens):
            token = self.backbone.logits(self.backbone.final_norm(current))[:, -1].argmax(
                dim=-1
            )  # (B,)
            generated.append(token)
            masks.append(running.clone())
            cache, current = decode_token(
                self.backbone.layers,
                self.backbone.rotary_emb,
                self.geometry,
                self.backbone.embed_text(token[:, None]),
                cache,
                running,
            )
            running = running & (token != eos_token_id)
            if not running.any():
                break
        return cache, torch.stack(generated, dim=1), torch.stack(masks, dim=1)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def sample_actions(
        self,
        inputs: ModelInputs,
        noise: torch.Tensor | None = None,
        use_cache: bool = True,
        cache: PrefixCache | None = None,
        feature_cache: FeatureCache | None = None,
    ) -> torch.Tensor:
        """Denoise a chunk (B, H, A) from `noise` in `num_inference_steps` steps.

        With `use_cache`, the prefix is encoded once and its KV cache reused by every step (or
        `cache` is used as given, e.g. grown by `generate_reasoning`); without, every step
        recomputes the whole sequence (the reference the cache must match). A `feature_cache`
        additionally reuses expert block outputs across steps on its schedule.
        """
        if feature_cache is not None:
            if not use_cache:
                raise ValueError(
                    "feature caching works on top of the prefix KV cache (use_cache=True)"
                )
            feature_cache.reset()
        batch = inputs.state.shape[0]
        shape = (batch, self.config.action_horizon, self.config.action_dim)
        if noise is None:
            noise = torch.randn(shape, device=inputs.state.device, dtype=inputs.state.dtype)
        if use_cache and cache is None:
            cache = self.encode_prefix(inputs)

        def predict(noisy: torch.Tensor, time: torch.Tensor, step: int) -> torch.Tensor:
            if not use_cache:
                return self.predict_joint(inputs, noisy, time)
            if feature_cache is not None:
                feature_cache.step = step
            return self.predict_with_cache(cache, inputs.state, noisy, time, feature_cache)

        x = noise
        if self.config.objective == "flow":
            steps = self.config.num_inference_steps
            dt = -1.0 / steps
            for step in range(steps):
                time = torch.full((batch,), 1.0 + step * dt, device=x.device, dtype=x.dtype)
                x = x + dt * predict(x, time, step)
            return x
        self.scheduler.set_timesteps(self.config.num_inference_steps)
        for step, timestep in enumerate(self.scheduler.timesteps):
            time = torch.full(
                (batch,),
                float(timestep) / self.config.diffusion_train_steps,
                device=x.device,
                dtype=x.dtype,
            )
            x = self.scheduler.step(predict(x, time, step), timestep, x).prev_sample
        return x


@torch.no_grad()
def profile_block_features(model: VLAModel, inputs: ModelInputs, noise: torch.Tensor) -> dict:
    """Every expert block's output at every denoising step of one uncached-feature run:
    block -> (steps, B, S, De). The input to `adaptive_schedule`."""
    steps = model.config.num_inference_steps
    everything = {block: frozenset(range(steps)) for block in all_blocks(model.geometry.num_layers)}
    recorder = RecordingFeatureCache(everything)
    model.sample_actions(inputs, noise=noise, feature_cache=recorder)
    return {block: torch.stack(outputs) for block, outputs in recorder.history.items()}


class RecordingFeatureCache(FeatureCache):
    """A feature cache that also keeps every computed output, for profiling."""

    def __init__(self, refresh_steps: dict) -> None:
        super().__init__(refresh_steps)
        self.history: dict = {}

    def output(self, block, compute):  # noqa: ANN001, ANN201
        value = super().output(block, compute)
        self.history.setdefault(block, []).append(value)
        return value
