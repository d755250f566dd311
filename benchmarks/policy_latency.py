"""Chunk latency of the policy model: prefix KV cache and feature caching, split by stage.

For 1 and 8 environments batched, measures (median over repeats, same run):
  prefix      encoding images + instruction into the KV cache (once per chunk)
  denoise     all denoising steps of the expert (and per step)
  reasoning   generating a chain of thought token by token (think mode; per token)
and compares whole-chunk latency for: no KV cache (every step recomputes the whole sequence),
the prefix KV cache, and the KV cache plus feature caching (uniform every 2 steps; adaptive
per-block schedule), with the feature-cached actions' error against the uncached ones; and the
fast path (vla/fast_path.py): static, with `--compile` torch.compile of its step, and on CUDA the
CUDA-graph modes, each with its largest deviation from the eager KV-cache chunk.

    .venv/bin/python benchmarks/policy_latency.py [--compile]  # tiny config on CPU
    .venv/bin/python benchmarks/policy_latency.py --config pi0 --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description  # noqa: E402
from common import median_seconds as timed  # noqa: E402

from vla.config import VLAConfig  # noqa: E402
from vla.fast_path import FastSampler  # noqa: E402
from vla.feature_cache import FeatureCache, adaptive_schedule, uniform_schedule  # noqa: E402
from vla.model import ModelInputs, VLAModel, profile_block_features  # noqa: E402


def to_device(inputs: ModelInputs, device: str, dtype: torch.dtype) -> ModelInputs:
    return ModelInputs(
        images={k: v.to(device, dtype) for k, v in inputs.images.items()},
        text_ids=inputs.text_ids.to(device),
        text_mask=inputs.text_mask.to(device),
        state=inputs.state.to(device, dtype),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reasoning-tokens", type=int, default=32)
    parser.add_argument(
        "--compile", action="store_true", help="also time the fast path's torch.compile modes"
    )
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    config = VLAConfig.named(args.config, max_reasoning_tokens=args.reasoning_tokens)
    model = VLAModel.build(config, args.device, dtype).eval()  # never an fp32 copy first
    steps = config.num_inference_steps
    print(f"machine: {machine_description()}")
    print(
        f"config {args.config}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
        f"{steps} denoising steps, horizon {config.action_horizon}, {args.device} {args.dtype}\n"
    )
    modes = ["static"]
    if args.device.startswith("cuda"):
        modes += ["graph"]
    if args.compile:
        modes += ["compile-graph"] if args.device.startswith("cuda") else ["compile"]
    samplers = {mode: FastSampler(model, mode) for mode in modes}  # shared by both batch sizes
    for batch in (1, 8):
        report_batch(model, config, batch, args, dtype, samplers)


def report_batch(
    model: VLAModel,
    config: VLAConfig,
    batch: int,
    args: argparse.Namespace,
    dtype: torch.dtype,
    samplers: dict[str, FastSampler],
) -> None:
    """Print every measurement for one batch size."""
    steps = config.num_inference_steps
    layers = model.geometry.num_layers
    lengths = tuple(12 + (i % 5) for i in range(batch))
    inputs = to_device(
        ModelInputs.fake(config, batch=batch, text_lengths=lengths), args.device, dtype
    )
    noise = torch.randn(
        batch, config.action_horizon, config.action_dim, device=args.device, dtype=dtype
    )
    with torch.no_grad():
        cache = model.encode_prefix(inputs)
        prefix_time = timed(lambda: model.encode_prefix(inputs), args.repeats, args.device)
        uncached = timed(
            lambda: model.sample_actions(inputs, noise=noise, use_cache=False),
            args.repeats,
            args.device,
        )
        cached = timed(lambda: model.sample_actions(inputs, noise=noise), args.repeats, args.device)
        denoise = timed(
            lambda: model.sample_actions(inputs, noise=noise, cache=cache),
            args.repeats,
            args.device,
        )
        # a never-ending chain: generation runs to max_reasoning_tokens for a stable count
        reasoning = timed(
            lambda: model.generate_reasoning(inputs, eos_token_id=-1),
            max(1, args.repeats // 2),
            args.device,
        )
        reference = model.sample_actions(inputs, noise=noise)
        profile = profile_block_features(model, inputs, noise)
        variants = {
            "uniform every 2": uniform_schedule(layers, steps, every=2),
            "adaptive, 5 refreshes": adaptive_schedule(profile, refreshes=5, num_layers=layers),
        }
        print(f"batch {batch}:")
        print(f"  prefix encode              {prefix_time * 1e3:8.1f} ms")
        print(
            f"  denoise ({steps} steps)          {denoise * 1e3:8.1f} ms  ({denoise / steps * 1e3:.1f} ms/step)"
        )
        print(
            f"  reasoning ({args.reasoning_tokens} tokens)       {reasoning * 1e3:8.1f} ms  ({reasoning / args.reasoning_tokens * 1e3:.1f} ms/token)"
        )
        print(f"  chunk, no KV cache         {uncached * 1e3:8.1f} ms")
        print(
            f"  chunk, prefix KV cache     {cached * 1e3:8.1f} ms  -> {uncached / cached:.2f}x faster than no cache"
        )
        for name, schedule in variants.items():
            feature_cache = FeatureCache(schedule)
            latency = timed(
                lambda feature_cache=feature_cache: model.sample_actions(
                    inputs, noise=noise, feature_cache=feature_cache
                ),
                args.repeats,
                args.device,
            )
            actions = model.sample_actions(
                inputs, noise=noise, feature_cache=FeatureCache(schedule)
            )
            error = (actions - reference).abs()
            skipped = feature_cache.reused / (feature_cache.reused + feature_cache.computed)
            print(
                f"  chunk, KV + features ({name}) {latency * 1e3:8.1f} ms  -> {cached / latency:.2f}x vs KV cache; "
                f"{skipped:.0%} of expert blocks reused; action error max {error.max():.4f}, "
                f"mean {error.mean():.4f} (actions' mean |a| {reference.abs().mean():.3f})"
            )
        for mode, sampler in samplers.items():
            fast = sampler.sample(inputs, noise)  # compiles or captures on its first call
            latency = timed(lambda s=sampler: s.sample(inputs, noise), args.repeats, args.device)
            print(
                f"  chunk, fast path {mode:13s} {latency * 1e3:8.1f} ms  -> {cached / latency:.2f}x vs KV cache; "
                f"max deviation from it {(fast - reference).abs().max():.1e}"
            )
        print()


if __name__ == "__main__":
    main()
