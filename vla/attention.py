"""Joint prefix/suffix attention over two stacks of decoder layers (pi0's mixture of transformers).

Layer i of the backbone processes prefix tokens (images, instruction) and layer i of the action
expert processes suffix tokens (state, noisy actions); each computes its own q/k/v, and attention
runs over the concatenated keys/values with a prefix-LM mask: prefix queries see the (valid)
prefix only, suffix queries see the whole valid prefix and the whole suffix. Because the prefix
never sees the suffix, its keys/values do not depend on the suffix and can be computed once per
chunk and reused by every denoising step: `encode_prefix` + `suffix_forward` give the same result
as `joint_forward`, which recomputes everything (tests/test_model.py proves it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from transformers.models.gemma.modeling_gemma import apply_rotary_pos_emb

from vla.backbone import AttentionGeometry
from vla.feature_cache import FeatureCache


@dataclass
class PrefixCache:
    """Per-layer rotated keys and values of the prefix, (B, kv_heads, P, head_dim) each."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor  # (B, P) bool: valid prefix tokens
    lengths: torch.Tensor  # (B,) number of valid prefix tokens: where suffix positions start


def prefix_allowed(mask: torch.Tensor, causal: torch.Tensor | None) -> torch.Tensor:
    """(B, P, P) bool: which prefix keys each prefix query may attend to.

    Images and instruction attend to each other both ways (prefix-LM); reasoning tokens
    (`causal`) are generated left to right, so each sees the images, the instruction and the
    reasoning tokens up to itself, and nothing before it sees them.
    """
    valid_keys = mask[:, None, :]
    if causal is None:
        return valid_keys.expand(-1, mask.shape[1], -1)
    length = mask.shape[1]
    lower = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    causal_query, causal_key = causal[:, :, None], causal[:, None, :]
    return valid_keys & (~causal_key | (causal_query & lower[None]))


def prefix_positions(mask: torch.Tensor) -> torch.Tensor:
    """Positions 0.. over valid tokens (padding repeats the last position; it is masked anyway)."""
    return (torch.cumsum(mask.long(), dim=1) - 1).clamp(min=0)


def project_qkv(
    layer: nn.Module,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    geometry: AttentionGeometry,
):
    batch, length, _ = hidden.shape
    normed = layer.input_layernorm(hidden)
    attention = layer.self_attn
    q = (
        attention.q_proj(normed)
        .view(batch, length, geometry.num_heads, geometry.head_dim)
        .transpose(1, 2)
    )
    k = (
        attention.k_proj(normed)
        .view(batch, length, geometry.num_kv_heads, geometry.head_dim)
        .transpose(1, 2)
    )
    v = (
        attention.v_proj(normed)
        .view(batch, length, geometry.num_kv_heads, geometry.head_dim)
        .transpose(1, 2)
    )
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return q, k, v  # (B, heads, T, head_dim), (B, kv_heads, T, head_dim) x2


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor
) -> torch.Tensor:
    """Grouped-query attention; `allowed` (B, Tq, Tk) bool. Returns (B, Tq, heads * head_dim)."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
    return out.transpose(1, 2).flatten(2)


def _finish(layer: nn.Module, hidden: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    hidden = hidden + layer.self_attn.o_proj(attended)
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


def suffix_allowed(prefix_mask: torch.Tensor, suffix_length: int) -> torch.Tensor:
    batch = prefix_mask.shape[0]
    prefix_part = prefix_mask[:, None, :].expand(batch, suffix_length, -1)
    suffix_part = torch.ones(
        batch, suffix_length, suffix_length, dtype=torch.bool, device=prefix_mask.device
    )
    return torch.cat([prefix_part, suffix_part], dim=2)  # (B, S, P + S)


def encode_prefix(
    backbone_layers: nn.ModuleList,
    rotary: nn.Module,
    geometry: AttentionGeometry,
    prefix: torch.Tensor,
    mask: torch.Tensor,
    causal: torch.Tensor | None = None,
) -> tuple[PrefixCache, torch.Tensor]:
    """Run the prefix (B, P, D) through the backbone; returns its KV cache and output hidden states."""
    positions = prefix_positions(mask)
    cos, sin = rotary(prefix, positions)
    allowed = prefix_allowed(mask, causal)
    keys, values, hidden = [], [], prefix
    for layer in backbone_layers:
        q, k, v = project_qkv(layer, hidden, cos, sin, geometry)
        keys.append(k)
        values.append(v)
        hidden = _finish(layer, hidden, _attend(q, k, v, allowed))
    return PrefixCache(keys, values, mask, mask.sum(dim=1)), hidden


def suffix_forward(
    expert_layers: nn.ModuleList,
    rotary: nn.Module,
    geometry: AttentionGeometry,
    suffix: torch.Tensor,
    cache: PrefixCache,
    feature_cache: FeatureCache | None = None,
) -> torch.Tensor:
    """Run the suffix (B, S, De) through the expert, attending to the cached prefix.

    With a `feature_cache`, each attention/MLP block either computes its output or reuses the
    one stored at its last refresh (vla/feature_cache.py).
    """
    length = suffix.shape[1]
    positions = cache.lengths[:, None] + torch.arange(length, device=suffix.device)[None]
    cos, sin = rotary(suffix, positions)
    allowed = suffix_allowed(cache.mask, length)
    hidden = suffix
    for index, layer in enumerate(expert_layers):

        def attention_output(
            layer: nn.Module = layer, index: int = index, hidden: torch.Tensor = hidden
        ) -> torch.Tensor:
            q, k, v = project_qkv(layer, hidden, cos, sin, geometry)
            k = torch.cat([cache.keys[index], k], dim=2)
            v = torch.cat([cache.values[index], v], dim=2)
            return layer.self_attn.o_proj(_attend(q, k, v, allowed))

        if feature_cache is None:
            hidden = hidden + attention_output()
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
            continue
        hidden = hidden + feature_cache.output((index, "attention"), attention_output)
        after_attention = hidden
        hidden = hidden + feature_cache.output(
            (index, "mlp"),
            lambda: layer.mlp(layer.post_attention_layernorm(after_attention)),  # noqa: B023
        )
    return hidden


def joint_forward(
    backbone_layers: nn.ModuleList,
    expert_layers: nn.ModuleList,
    rotary: nn.Module,
    geometry: AttentionGeometry,
    prefix: torch.Tensor,
    mask: torch.Tensor,
    suffix: torch.Tensor,
    causal: torch.Tensor | None = None,
    activation_checkpointing: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefix and suffix through both stacks in one pass (the training path; no cache).

    `activation_checkpointing` trades compute for memory on large configs: each layer pair's
    activations are recomputed during the backward pass instead of being kept."""
    prefix_length, suffix_length = prefix.shape[1], suffix.shape[1]
    prefix_pos = prefix_positions(mask)
    suffix_pos = mask.sum(dim=1)[:, None] + torch.arange(suffix_length, device=suffix.device)[None]
    prefix_cos, prefix_sin = rotary(prefix, prefix_pos)
    suffix_cos, suffix_sin = rotary(suffix, suffix_pos)
    prefix_rows = torch.cat(
        [
            prefix_allowed(mask, causal),
            torch.zeros(
                mask.shape[0], prefix_length, suffix_length, dtype=torch.bool, device=mask.device
            ),
        ],
        dim=2,
    )
    allowed = torch.cat([prefix_rows, suffix_allowed(mask, suffix_length)], dim=1)  # (B, P+S, P+S)

    def layer_pair(
        backbone_layer: nn.Module,
        expert_layer: nn.Module,
        prefix_hidden: torch.Tensor,
        suffix_hidden: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        qp, kp, vp = project_qkv(backbone_layer, prefix_hidden, prefix_cos, prefix_sin, geometry)
        qs, ks, vs = project_qkv(expert_layer, suffix_hidden, suffix_cos, suffix_sin, geometry)
        attended = _attend(
            torch.cat([qp, qs], 2), torch.cat([kp, ks], 2), torch.cat([vp, vs], 2), allowed
        )
        return (
            _finish(backbone_layer, prefix_hidden, attended[:, :prefix_length]),
            _finish(expert_layer, suffix_hidden, attended[:, prefix_length:]),
        )

    prefix_hidden, suffix_hidden = prefix, suffix
    for backbone_layer, expert_layer in zip(backbone_layers, expert_layers, strict=True):
        if activation_checkpointing and torch.is_grad_enabled():
            # keep only each layer pair's inputs; recompute its activations in the backward pass
            prefix_hidden, suffix_hidden = torch.utils.checkpoint.checkpoint(
                layer_pair,
                backbone_layer,
                expert_layer,
                prefix_hidden,
                suffix_hidden,
                use_reentrant=False,
            )
        else:
            prefix_hidden, suffix_hidden = layer_pair(
                backbone_layer, expert_layer, prefix_hidden, suffix_hidden
            )
    return prefix_hidden, suffix_hidden


def decode_token(
    backbone_layers: nn.ModuleList,
    rotary: nn.Module,
    geometry: AttentionGeometry,
    token: torch.Tensor,
    cache: PrefixCache,
    valid: torch.Tensor,
) -> tuple[PrefixCache, torch.Tensor]:
    """Append one generated token (B, 1, D) to the prefix: it attends to the whole valid prefix
    and itself, and its keys/values join the cache, marked valid where `valid` (B,) is True
    (False for sequences that already ended). Returns the grown cache and the token's hidden state."""
    positions = cache.lengths[:, None]
    cos, sin = rotary(token, positions)
    grown_mask = torch.cat([cache.mask, valid[:, None]], dim=1)
    allowed = torch.cat([cache.mask, torch.ones_like(valid[:, None])], dim=1)[:, None, :]
    keys, values, hidden = [], [], token
    for index, layer in enumerate(backbone_layers):
        q, k, v = project_qkv(layer, hidden, cos, sin, geometry)
        k = torch.cat([cache.keys[index], k], dim=2)
        v = torch.cat([cache.values[index], v], dim=2)
        keys.append(k)
        values.append(v)
        hidden = _finish(layer, hidden, _attend(q, k, v, allowed))
    return PrefixCache(keys, values, grown_mask, cache.lengths + valid.long()), hidden
