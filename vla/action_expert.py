"""The action expert: a narrower decoder with one layer per backbone layer and the backbone's
attention geometry (query heads, kv heads, head dim), so its keys/values concatenate with the
backbone's at every layer. It embeds the robot state (one token) and the noisy action chunk mixed
with the flow/diffusion time (one token per future action), as pi0 does."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import GemmaConfig
from transformers.models.gemma.modeling_gemma import GemmaDecoderLayer, GemmaRMSNorm

from vla.backbone import AttentionGeometry
from vla.config import VLAConfig


def sinusoidal_time_embedding(
    time: torch.Tensor, width: int, min_period: float = 4e-3, max_period: float = 4.0
) -> torch.Tensor:
    """(B,) times in [0, 1] -> (B, width); periods spread geometrically as in pi0."""
    fraction = torch.linspace(0.0, 1.0, width // 2, device=time.device, dtype=torch.float64)
    period = min_period * (max_period / min_period) ** fraction
    angle = time.to(torch.float64)[:, None] * (2 * math.pi / period)[None]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1).to(time.dtype)


class ActionExpert(nn.Module):
    def __init__(self, config: VLAConfig, geometry: AttentionGeometry) -> None:
        super().__init__()
        width = config.expert_hidden_size
        layer_config = GemmaConfig(
            hidden_size=width,
            intermediate_size=config.expert_intermediate_size,
            num_hidden_layers=geometry.num_layers,
            num_attention_heads=geometry.num_heads,
            num_key_value_heads=geometry.num_kv_heads,
            head_dim=geometry.head_dim,
            vocab_size=1,  # the expert embeds no tokens
            pad_token_id=None,
            bos_token_id=None,
            eos_token_id=None,
        )
        self.layers = nn.ModuleList(
            GemmaDecoderLayer(layer_config, index) for index in range(geometry.num_layers)
        )
        self.final_norm = GemmaRMSNorm(width, eps=layer_config.rms_norm_eps)
        self.state_in = nn.Linear(config.state_dim, width)
        self.action_in = nn.Linear(config.action_dim, width)
        self.action_time_mlp = nn.Sequential(
            nn.Linear(2 * width, width), nn.SiLU(), nn.Linear(width, width)
        )
        self.action_out = nn.Linear(width, config.action_dim)
        self.width = width

    def embed_suffix(
        self, state: torch.Tensor, noisy_actions: torch.Tensor, time: torch.Tensor
    ) -> torch.Tensor:
        """state (B, S_dim), noisy actions (B, H, A), time (B,) -> suffix tokens (B, 1 + H, De)."""
        state_token = self.state_in(state)[:, None]  # (B, 1, De)
        actions = self.action_in(noisy_actions)  # (B, H, De)
        time_embedding = sinusoidal_time_embedding(time, self.width).to(actions.dtype)
        time_tokens = time_embedding[:, None].expand_as(actions)
        action_tokens = self.action_time_mlp(torch.cat([actions, time_tokens], dim=-1))
        return torch.cat([state_token, action_tokens], dim=1)

    def readout(self, suffix_hidden: torch.Tensor) -> torch.Tensor:
        """Expert output (B, 1 + H, De) -> per-action prediction (B, H, A)."""
        return self.action_out(self.final_norm(suffix_hidden[:, 1:]))
