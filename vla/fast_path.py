"""The inference fast path: one action chunk with static shapes, the time conditioning of every
denoising step precomputed, and on CUDA the whole call captured once as a CUDA graph and replayed.

Why: at batch 1 a chunk is launch-bound on a GPU, not compute-bound. The eager reference
(`VLAModel.sample_actions`) issues ~15 kernels per expert layer per denoising step, and at every
step it re-concatenates the prefix's keys/values with the suffix's, recomputes the suffix's
rotary angles and attention mask, and re-embeds the time. Here, once per chunk, the prefix's
keys/values are written into buffers that have room for the suffix, and the rotary angles and
mask are computed; each step only writes the suffix's keys/values into the buffers' tail. The
time conditioning of step s is a precomputed row: the action-time MLP's first layer is linear in
its concatenated input, so its time half plus bias is folded per step once per model.

Modes (`FAST_PATHS`):
  static         the above, eager kernels; any device
  compile        the denoising step under `torch.compile` (one graph, reused by every step)
  graph          prefix + every denoising step captured as one CUDA graph per input shape (CUDA)
  compile-graph  the same capture around the compiled step (CUDA)

Limits: the flow objective (a diffusion scheduler's step is not captured), no feature cache.
Thinking and reasoning reuse feed a chain whose length varies, so they run the static denoiser
over the eager prefix cache, never a graph.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from vla.action_expert import sinusoidal_time_embedding
from vla.attention import PrefixCache, project_qkv, suffix_allowed
from vla.model import ModelInputs, VLAModel

FAST_PATHS = ("static", "compile", "graph", "compile-graph")
MAX_GRAPHS = 8  # captured input shapes kept per sampler (batch sizes a server meets); LRU beyond


class FastPathError(ValueError):
    """A fast path that cannot serve this model or device; the message says which and why."""


@dataclass
class _SuffixContext:
    """Everything a denoising step reads that does not change between steps of one chunk."""

    cos: torch.Tensor  # (B, S, head_dim) rotary angles of the suffix positions
    sin: torch.Tensor  # (B, S, head_dim)
    allowed: torch.Tensor  # (B, 1, S, P + S) bool attention mask
    keys: list[torch.Tensor]  # per layer (B, heads, P + S, head_dim): prefix, then suffix slots
    values: list[torch.Tensor]  # per layer (B, heads, P + S, head_dim)
    state_token: torch.Tensor  # (B, 1, De) the embedded robot state
    prefix_length: int


class FastSampler:
    """Samples action chunks like `model.sample_actions(inputs, noise)`, faster; same numbers up
    to floating-point reassociation (fp32: ~1e-6; bf16: bf16 rounding)."""

    def __init__(self, model: VLAModel, mode: str = "static") -> None:
        if mode not in FAST_PATHS:
            raise FastPathError(f"fast path must be one of {FAST_PATHS}, got {mode!r}")
        config = model.config
        if config.objective != "flow":
            raise FastPathError(
                f"the fast path integrates the flow objective; this model's objective is "
                f"{config.objective!r} (use the eager path: no fast_path)"
            )
        device = next(model.parameters()).device
        if mode in ("graph", "compile-graph") and device.type != "cuda":
            raise FastPathError(
                f"fast path {mode!r} captures a CUDA graph, but the model is on {device}; "
                "use 'static' or 'compile' there"
            )
        self.model, self.mode = model, mode
        self.geometry = model.geometry
        self.steps = config.num_inference_steps
        self._time_rows = self._precompute_time_rows()  # (steps, De)
        step = self._velocity
        self._step: Callable[..., torch.Tensor] = (
            torch.compile(step, dynamic=False) if "compile" in mode else step
        )
        self._graphs: OrderedDict[tuple, _CapturedChunk] = OrderedDict()

    # ------------------------------------------------------------------ public entry points
    @torch.no_grad()
    def sample(self, inputs: ModelInputs, noise: torch.Tensor) -> torch.Tensor:
        """A chunk (B, H, A) from `noise` (B, H, A), the prefix encoded from `inputs`."""
        noise = noise.to(self._time_rows.dtype)
        if self.mode in ("graph", "compile-graph") and inputs.reasoning_ids is None:
            key = _shape_key(inputs, noise)
            captured = self._graphs.get(key)
            if captured is None:
                captured = _CapturedChunk(self._chunk, inputs, noise)
                self._graphs[key] = captured
                while len(self._graphs) > MAX_GRAPHS:
                    self._graphs.popitem(last=False)
            self._graphs.move_to_end(key)
            return captured(inputs, noise)
        return self._chunk(inputs, noise)

    @torch.no_grad()
    def denoise(self, cache: PrefixCache, state: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Integrate the flow from `noise` (B, H, A) over a given prefix cache (e.g. one grown by
        `generate_reasoning`); eager or compiled steps, never a graph."""
        context = self._context(cache, state, noise.shape[1])
        x = noise.to(self._time_rows.dtype)
        dt = -1.0 / self.steps
        for step in range(self.steps):
            x = x + dt * self._step(x, self._time_rows[step], context)
        return x

    # ------------------------------------------------------------------ pieces
    def _chunk(self, inputs: ModelInputs, noise: torch.Tensor) -> torch.Tensor:
        return self.denoise(self.model.encode_prefix(inputs), inputs.state, noise)

    def _precompute_time_rows(self) -> torch.Tensor:
        """Row s: the action-time MLP's first layer applied to step s's time embedding, plus its
        bias (the eager path computes it per step from the concatenation [actions, time])."""
        expert = self.model.expert
        first = expert.action_time_mlp[0]
        width = expert.width
        parameter = first.weight
        dt = -1.0 / self.steps
        rows = []
        for step in range(self.steps):
            # the same time value, in the same dtype, as the eager loop feeds
            time = torch.full((1,), 1.0 + step * dt, device=parameter.device, dtype=parameter.dtype)
            embedding = sinusoidal_time_embedding(time, width).to(parameter.dtype)  # (1, De)
            rows.append(F.linear(embedding, parameter[:, width:], first.bias))
        return torch.cat(rows)  # (steps, De)

    def _context(self, cache: PrefixCache, state: torch.Tensor, horizon: int) -> _SuffixContext:
        geometry = self.geometry
        suffix_length = 1 + horizon
        prefix_length = cache.mask.shape[1]
        positions = cache.lengths[:, None] + torch.arange(suffix_length, device=state.device)[None]
        expert = self.model.expert
        state_token = expert.state_in(state)[:, None]  # (B, 1, De)
        cos, sin = self.model.backbone.rotary_emb(state_token, positions)
        groups = geometry.num_heads // geometry.num_kv_heads
        keys, values = [], []
        for prefix_keys, prefix_values in zip(cache.keys, cache.values, strict=True):
            batch, _, _, head_dim = prefix_keys.shape
            shape = (batch, geometry.num_heads, prefix_length + suffix_length, head_dim)
            key_buffer = prefix_keys.new_empty(shape)
            value_buffer = prefix_values.new_empty(shape)
            key_buffer[:, :, :prefix_length] = prefix_keys.repeat_interleave(groups, dim=1)
            value_buffer[:, :, :prefix_length] = prefix_values.repeat_interleave(groups, dim=1)
            keys.append(key_buffer)
            values.append(value_buffer)
        return _SuffixContext(
            cos=cos,
            sin=sin,
            allowed=suffix_allowed(cache.mask, suffix_length)[:, None],
            keys=keys,
            values=values,
            state_token=state_token,
            prefix_length=prefix_length,
        )

    def _velocity(
        self, noisy: torch.Tensor, time_row: torch.Tensor, context: _SuffixContext
    ) -> torch.Tensor:
        """The expert's velocity (B, H, A) for one step: `predict_with_cache` with the per-chunk
        work hoisted into `context` and the time half of the action-time MLP precomputed."""
        expert, geometry = self.model.expert, self.geometry
        first, activation, second = expert.action_time_mlp
        actions = F.linear(expert.action_in(noisy), first.weight[:, : expert.width])  # (B, H, De)
        action_tokens = second(activation(actions + time_row))
        hidden = torch.cat([context.state_token, action_tokens], dim=1)  # (B, S, De)
        groups = geometry.num_heads // geometry.num_kv_heads
        start = context.prefix_length
        for index, layer in enumerate(expert.layers):
            q, k, v = project_qkv(layer, hidden, context.cos, context.sin, geometry)
            context.keys[index][:, :, start:] = k.repeat_interleave(groups, dim=1)
            context.values[index][:, :, start:] = v.repeat_interleave(groups, dim=1)
            attended = F.scaled_dot_product_attention(
                q, context.keys[index], context.values[index], attn_mask=context.allowed
            )
            hidden = hidden + layer.self_attn.o_proj(attended.transpose(1, 2).flatten(2))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return expert.readout(hidden)


class _CapturedChunk:
    """One CUDA graph of a whole chunk call for one input shape, over static input buffers: a
    call copies its inputs into the buffers, replays the graph and returns a copy of its output."""

    def __init__(
        self,
        chunk: Callable[[ModelInputs, torch.Tensor], torch.Tensor],
        inputs: ModelInputs,
        noise: torch.Tensor,
    ) -> None:
        self.inputs = _map_tensors(inputs, torch.Tensor.clone)
        self.noise = noise.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: lazy inits and compilation happen outside capture
            for _ in range(2):
                chunk(self.inputs, self.noise)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = chunk(self.inputs, self.noise)

    def __call__(self, inputs: ModelInputs, noise: torch.Tensor) -> torch.Tensor:
        _copy_tensors(self.inputs, inputs)
        self.noise.copy_(noise)
        self.graph.replay()
        return self.output.clone()


def _tensors(inputs: ModelInputs) -> list[tuple[str, torch.Tensor]]:
    """The input's tensors by a stable name (dicts of cameras flattened), None fields skipped."""
    named = []
    for field in fields(inputs):
        value = getattr(inputs, field.name)
        if isinstance(value, dict):
            named += [(f"{field.name}.{key}", tensor) for key, tensor in sorted(value.items())]
        elif isinstance(value, torch.Tensor):
            named.append((field.name, value))
    return named


def _shape_key(inputs: ModelInputs, noise: torch.Tensor) -> tuple:
    return (
        *((name, tuple(tensor.shape), tensor.dtype) for name, tensor in _tensors(inputs)),
        ("noise", tuple(noise.shape), noise.dtype),
    )


def _map_tensors(
    inputs: ModelInputs, function: Callable[[torch.Tensor], torch.Tensor]
) -> ModelInputs:
    values = {}
    for field in fields(inputs):
        value = getattr(inputs, field.name)
        if isinstance(value, dict):
            value = {key: function(tensor) for key, tensor in value.items()}
        elif isinstance(value, torch.Tensor):
            value = function(value)
        values[field.name] = value
    return ModelInputs(**values)


def _copy_tensors(target: ModelInputs, source: ModelInputs) -> None:
    for (_, into), (_, value) in zip(_tensors(target), _tensors(source), strict=True):
        into.copy_(value)
