"""`VLAModel`: backbone prefix + action expert, trained with flow matching (or diffusion).

Interfaces (openpi's): `compute_loss(batch)` for training and `sample_actions(...)` for inference.
Both take tensors already normalized by the policy's input transforms (vla/policy.py): images
(B, 3, H, W) float in [-1, 1] per camera, instruction token ids with a mask, state (B, 8),
actions (B, H, 7). Robot and dataset specifics stay out of this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vla.attention import PrefixCache, encode_prefix, joint_forward, suffix_forward
from vla.backbone import build_backbone
from vla.config import VLAConfig
from vla.expert import ActionExpert


@dataclass
class ModelInputs:
    """One batch of normalized inputs."""

    images: dict[str, torch.Tensor]  # camera -> (B, 3, H, W) float in [-1, 1]
    text_ids: torch.Tensor  # (B, L) long
    text_mask: torch.Tensor  # (B, L) bool
    state: torch.Tensor  # (B, state_dim)


class VLAModel(nn.Module):
    def __init__(self, config: VLAConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config)
        self.geometry = self.backbone.geometry
        self.expert = ActionExpert(config, self.geometry)
        if config.objective == "diffusion":
            from diffusers import DDIMScheduler

            self.scheduler = DDIMScheduler(
                num_train_timesteps=config.diffusion_train_steps,
                beta_schedule="squaredcos_cap_v2",
                clip_sample=False,
            )

    # ------------------------------------------------------------------ prefix
    def embed_prefix(self, inputs: ModelInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Image tokens of every camera, then instruction tokens: (B, P, D) and a (B, P) mask."""
        tokens, masks = [], []
        for camera in self.config.cameras:
            image_tokens = self.backbone.embed_images(inputs.images[camera])
            tokens.append(image_tokens)
            masks.append(
                torch.ones(image_tokens.shape[:2], dtype=torch.bool, device=image_tokens.device)
            )
        tokens.append(self.backbone.embed_text(inputs.text_ids))
        masks.append(inputs.text_mask.bool())
        return torch.cat(tokens, dim=1), torch.cat(masks, dim=1)

    def encode_prefix(self, inputs: ModelInputs) -> PrefixCache:
        prefix, mask = self.embed_prefix(inputs)
        cache, _ = encode_prefix(
            self.backbone.layers, self.backbone.rotary_emb, self.geometry, prefix, mask
        )
        return cache

    # ------------------------------------------------------------------ action prediction
    def predict_with_cache(
        self,
        cache: PrefixCache,
        state: torch.Tensor,
        noisy_actions: torch.Tensor,
        time: torch.Tensor,
    ) -> torch.Tensor:
        """The expert's prediction (velocity or noise) (B, H, A) for one denoising step."""
        suffix = self.expert.embed_suffix(state, noisy_actions, time)
        hidden = suffix_forward(
            self.expert.layers, self.backbone.rotary_emb, self.geometry, suffix, cache
        )
        return self.expert.readout(hidden)

    def predict_joint(
        self, inputs: ModelInputs, noisy_actions: torch.Tensor, time: torch.Tensor
    ) -> torch.Tensor:
        """The same prediction computed without a cache, prefix and suffix in one pass."""
        prefix, mask = self.embed_prefix(inputs)
        suffix = self.expert.embed_suffix(inputs.state, noisy_actions, time)
        _, hidden = joint_forward(
            self.backbone.layers,
            self.expert.layers,
            self.backbone.rotary_emb,
            self.geometry,
            prefix,
            mask,
            suffix,
        )
        return self.expert.readout(hidden)

    # ------------------------------------------------------------------ training
    def compute_loss(
        self,
        inputs: ModelInputs,
        actions: torch.Tensor,
        action_is_pad: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Masked MSE of the expert's prediction; padded chunk positions do not count."""
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
        prediction = self.predict_joint(inputs, noisy, model_time)
        per_step = ((prediction - target) ** 2).mean(dim=-1)  # (B, H)
        valid = (
            torch.ones_like(per_step) if action_is_pad is None else (~action_is_pad).to(per_step)
        )
        action_loss = (per_step * valid).sum() / valid.sum().clamp(min=1)
        return {"loss": action_loss, "action_loss": action_loss}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def sample_actions(
        self, inputs: ModelInputs, noise: torch.Tensor | None = None, use_cache: bool = True
    ) -> torch.Tensor:
        """Denoise a chunk (B, H, A) from `noise` in `num_inference_steps` steps.

        With `use_cache`, the prefix is encoded once and its KV cache reused by every step;
        without, every step recomputes the whole sequence (the reference the cache must match).
        """
        batch = inputs.state.shape[0]
        shape = (batch, self.config.action_horizon, self.config.action_dim)
        x = (
            torch.randn(shape, device=inputs.state.device, dtype=inputs.state.dtype)
            if noise is None
            else noise
        )
        cache = self.encode_prefix(inputs) if use_cache else None

        def predict(noisy: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
            if cache is not None:
                return self.predict_with_cache(cache, inputs.state, noisy, time)
            return self.predict_joint(inputs, noisy, time)

        if self.config.objective == "flow":
            steps = self.config.num_inference_steps
            dt = -1.0 / steps
            for step in range(steps):
                time = torch.full((batch,), 1.0 + step * dt, device=x.device, dtype=x.dtype)
                x = x + dt * predict(x, time)
            return x
        self.scheduler.set_timesteps(self.config.num_inference_steps)
        for timestep in self.scheduler.timesteps:
            time = torch.full(
                (batch,),
                float(timestep) / self.config.diffusion_train_steps,
                device=x.device,
                dtype=x.dtype,
            )
            x = self.scheduler.step(predict(x, time), timestep, x).prev_sample
        return x
