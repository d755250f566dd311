"""VLM backbones behind one small interface, so the rest of `vla` is family-agnostic.

The action expert attends to the backbone's keys/values layer by layer, so `vla` runs the
decoder layers itself rather than calling the HF model's forward: an adapter exposes the pieces
of each layer (norms, q/k/v/o projections, MLP), the rotary embedding, the token embeddings and
the image encoder. A second family (SmolVLM/Idefics3, Qwen2-VL) is a new adapter registered in
`BACKBONES`, not a rewrite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from vla.config import VLAConfig


@dataclass(frozen=True)
class AttentionGeometry:
    """What the expert must share with the backbone for keys/values to concatenate."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int


class DecoderLayer(Protocol):
    """The parts of one pre-norm decoder layer (the HF Llama/Gemma family layout)."""

    input_layernorm: nn.Module
    post_attention_layernorm: nn.Module
    mlp: nn.Module
    self_attn: nn.Module  # with q_proj, k_proj, v_proj, o_proj


class Backbone(nn.Module):
    """Interface every adapter implements."""

    geometry: AttentionGeometry
    layers: nn.ModuleList  # of DecoderLayer
    rotary_emb: nn.Module  # (x, position_ids) -> (cos, sin)
    final_norm: nn.Module

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [-1, 1] -> (B, N, D) tokens at the scale the decoder expects."""
        raise NotImplementedError

    def embed_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, L, D) tokens at the scale the decoder expects."""
        raise NotImplementedError

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, D) final-normed hidden states -> (B, T, vocab)."""
        raise NotImplementedError


class Fp32Rotary(nn.Module):
    """A HF rotary embedding whose frequency buffers stay float32 through any `.to(dtype)`.

    HF computes `inv_freq` in float32 and its forward reads it as float32, but `model.to(bf16)`
    casts the buffer like any other (its 8-bit mantissa moves the angle of position 40 by up to
    0.1 rad). A model built in bf16 keeps float32 frequencies while one cast to bf16 does not, so a
    bf16 checkpoint reloaded (built in bf16) gave different actions than the model that saved it.
    Here every cast moves the frequencies' device only: one dtype for them, however the model was
    made. They are non-persistent, so checkpoints are unchanged.
    """

    def __init__(self, rotary: nn.Module) -> None:
        super().__init__()
        self.inner = rotary

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x: (B, T, D) for dtype and device; position_ids: (B, T) -> cos, sin: (B, T, head_dim)."""
        return self.inner(x, position_ids)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 (torch's signature)
        kept = {name: buffer.float() for name, buffer in self.inner._buffers.items()
                if buffer is not None and buffer.is_floating_point()}  # fmt: skip
        super()._apply(fn, recurse)
        for name, original in kept.items():
            self.inner._buffers[name] = original.to(self.inner._buffers[name].device)
        return self


class PaliGemmaBackbone(Backbone):
    """PaliGemma (SigLIP vision tower + linear projector + Gemma decoder), as pi0 uses."""

    def __init__(self, config: VLAConfig) -> None:
        super().__init__()
        from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

        if config.pretrained_path:
            model = PaliGemmaForConditionalGeneration.from_pretrained(
                _checked_directory(config.pretrained_path),
                local_files_only=True,
                dtype=torch.float32,
            )
        else:
            model = PaliGemmaForConditionalGeneration(PaliGemmaConfig(**config.backbone_config))
        vision_size = model.config.vision_config.image_size
        if config.vision_tower == "siglip" and vision_size != config.image_size:
            raise ValueError(
                f"the backbone's vision tower takes {vision_size}x{vision_size} images but the config "
                f"says image_size={config.image_size}; make them equal"
            )
        text = model.config.text_config
        projected = model.model.multi_modal_projector.linear.out_features
        if config.vision_tower == "siglip" and projected != text.hidden_size:
            raise ValueError(
                f"the projector maps images to width {projected} but the decoder is {text.hidden_size} "
                f"wide; set projection_dim={text.hidden_size} in the backbone config"
            )
        self.geometry = AttentionGeometry(
            num_layers=text.num_hidden_layers,
            num_heads=text.num_attention_heads,
            num_kv_heads=text.num_key_value_heads,
            head_dim=text.head_dim,
            hidden_size=text.hidden_size,
        )
        self.hf_config = model.config  # kept so a checkpoint can inline it (no path needed to load)
        if config.vision_tower == "siglip":
            self.vision_tower = model.model.vision_tower
            self.projector = model.model.multi_modal_projector
        else:
            from vla.vision import TimmVisionTower

            pretrained_path = None
            if config.vision_pretrained is not None:
                from vla.pretrained import packaged_weights_path

                pretrained_path = packaged_weights_path(config.vision_pretrained)
            # replaces SigLIP + projector; the unused SigLIP weights are dropped with `model`
            self.timm_tower = TimmVisionTower(
                config.vision_tower.removeprefix("timm:"),
                config.image_size,
                text.hidden_size,
                pretrained_path=pretrained_path,
                max_tokens=config.vision_max_tokens,
                feature_stage=config.vision_feature_stage,
                position_embedding=config.vision_position_embedding,
                **config.vision_tower_kwargs,
            )
        self.embed_tokens = model.model.language_model.embed_tokens
        self.layers = model.model.language_model.layers
        self.rotary_emb = Fp32Rotary(model.model.language_model.rotary_emb)
        self.final_norm = model.model.language_model.norm
        self.lm_head = model.lm_head
        if getattr(model.config, "tie_word_embeddings", False):
            # HF ties these in init_weights, which a checkpoint load skips (no random init,
            # vla.checkpoint._build_model); tie them here so every build shares one matrix.
            self.lm_head.weight = self.embed_tokens.weight
        self.vocab_size = text.vocab_size
        # Gemma multiplies every input embedding by sqrt(hidden) before the first layer.
        self.embedding_scale = math.sqrt(text.hidden_size)

    @property
    def image_encoder(self) -> nn.Module | None:
        """The timm tower (whose `encode` features can be computed once per frame when it is
        frozen), or None for SigLIP."""
        return getattr(self, "timm_tower", None)

    def project_image_features(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N, C) features from `image_encoder.encode` -> (B, N, D) decoder tokens."""
        if not hasattr(self, "timm_tower"):
            raise ValueError("precomputed image features need a timm vision tower")
        return self.timm_tower.project(features)

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "timm_tower"):
            return self.timm_tower(pixels)  # (B, N, D)
        features = self.vision_tower(pixel_values=pixels).last_hidden_state  # (B, N, Dv)
        # HF PaliGemma divides projected features by sqrt(hidden) and Gemma multiplies all inputs by
        # it again: the decoder sees the projector's output unscaled.
        return self.projector(features)  # (B, N, D)

    def embed_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        embeddings = self.embed_tokens(token_ids)
        return embeddings * torch.tensor(self.embedding_scale, dtype=embeddings.dtype)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)


BACKBONES: dict[str, type[Backbone]] = {"paligemma": PaliGemmaBackbone}


def build_backbone(config: VLAConfig) -> Backbone:
    if config.backbone not in BACKBONES:
        raise KeyError(
            f"no backbone adapter {config.backbone!r}; registered: {', '.join(BACKBONES)}"
        )
    return BACKBONES[config.backbone](config)


def _checked_directory(path: str) -> str:
    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"{directory}: expected a model directory saved with save_pretrained (config.json + "
            f"*.safetensors); weights are never downloaded"
        )
    return str(directory)
