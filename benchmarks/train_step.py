"""Cost of one training step (forward + backward + AdamW) for the CPU model configs.

Compares, in one run and on the same kind of random batch, what sets how many steps a CPU run
can afford in its time budget:
- `tiny-fast` (a from-scratch 2-layer ViT, 16 tokens per camera) and `tiny-effnet` (ImageNet
  EfficientNet-Lite0, 16 tokens per camera) with its encoder three ways: frozen with per-frame
  features computed once (`optim.vision_lr_scale=0`: the step never runs the encoder), frozen
  but run live on every step, and fine-tuned (`vision_lr_scale=0.1`: forward and backward);
- act-only training (`processor.reasoning_dropout=1.0`) vs reasoning dropout 0.5 (half the
  batch carries a 100-token chain, the quickstart's length), the latter both as two passes
  (items with and without a chain, the default) and as one padded pass;
- fp32 vs bf16 autocast (`trainer.precision=bf16-mixed`) for the quickstart's configuration.

    .venv/bin/python benchmarks/train_step.py [--batch-size 32] [--repeats 8] [--only TEXT]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description  # noqa: E402

from vla.config import VLAConfig  # noqa: E402
from vla.model import ModelInputs, VLAModel  # noqa: E402

CHAIN_TOKENS = 100


@dataclass(frozen=True)
class Variant:
    label: str
    config: str
    vision: str  # "trained" | "features" | "frozen-live" | "fine-tuned"
    thinking_fraction: float  # share of the batch with a chain (1 - reasoning dropout)
    split_reasoning: bool = True
    bf16: bool = False  # forward and loss under torch.autocast(bfloat16), as bf16-mixed does


VARIANTS = (
    Variant("tiny-fast, act-only", "tiny-fast", "trained", 0.0),
    Variant("tiny-fast, dropout 0.5", "tiny-fast", "trained", 0.5),
    Variant("tiny-effnet frozen, features once, act-only", "tiny-effnet", "features", 0.0),
    Variant("tiny-effnet frozen, features once, dropout 0.5", "tiny-effnet", "features", 0.5),
    Variant(
        "tiny-effnet frozen, features once, dropout 0.5, one padded pass",
        "tiny-effnet",
        "features",
        0.5,
        split_reasoning=False,
    ),
    Variant(
        "tiny-effnet frozen, encoder run every step, act-only", "tiny-effnet", "frozen-live", 0.0
    ),
    Variant("tiny-effnet fine-tuned, act-only", "tiny-effnet", "fine-tuned", 0.0),
    Variant(
        "tiny-effnet frozen, features once, act-only, bf16-mixed",
        "tiny-effnet",
        "features",
        0.0,
        bf16=True,
    ),
    Variant(
        "tiny-effnet frozen, features once, dropout 0.5, bf16-mixed",
        "tiny-effnet",
        "features",
        0.5,
        bf16=True,
    ),
)


def batch(model: VLAModel, size: int, variant: Variant) -> ModelInputs:
    config = model.config
    generator = torch.Generator().manual_seed(0)
    inputs = ModelInputs(
        images={
            camera: torch.rand(size, 3, config.image_size, config.image_size, generator=generator)
            * 2
            - 1
            for camera in config.cameras
        },  # camera -> (B, 3, S, S)
        text_ids=torch.randint(3, 500, (size, 12), generator=generator),
        text_mask=torch.ones(size, 12, dtype=torch.bool),
        state=torch.randn(size, config.state_dim, generator=generator),
    )
    thinking = round(size * variant.thinking_fraction)
    if thinking:
        mask = torch.zeros(size, CHAIN_TOKENS, dtype=torch.bool)
        mask[:thinking] = True
        ids = torch.randint(3, 500, (size, CHAIN_TOKENS), generator=generator)
        inputs = replace(inputs, reasoning_ids=ids, reasoning_mask=mask)
    if variant.vision == "features":
        encoder = model.backbone.image_encoder
        with torch.no_grad():
            features = {camera: encoder.encode(pixels) for camera, pixels in inputs.images.items()}
        inputs = replace(inputs, images={}, image_features=features)  # camera -> (B, N, C)
    return inputs


def step_seconds(variant: Variant, batch_size: int, repeats: int) -> float:
    torch.manual_seed(0)
    model = VLAModel(VLAConfig.named(variant.config)).train()
    encoder = model.backbone.image_encoder
    if variant.vision in ("features", "frozen-live"):
        encoder.model.requires_grad_(False)
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": 1e-4}]
    if variant.vision == "fine-tuned":
        encoder_ids = {id(p) for p in encoder.model.parameters()}
        groups = [
            {"params": [p for p in model.parameters() if id(p) not in encoder_ids], "lr": 1e-4},
            {"params": list(encoder.model.parameters()), "lr": 1e-5},
        ]
    optimizer = torch.optim.AdamW(groups)
    inputs = batch(model, batch_size, variant)
    actions = torch.randn(batch_size, model.config.action_horizon, model.config.action_dim)
    times = []
    for index in range(repeats + 2):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.bf16):
            loss = model.compute_loss(inputs, actions, split_reasoning=variant.split_reasoning)
        loss = loss["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if index >= 2:  # warm-up steps excluded
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument(
        "--only",
        help="run the variants whose label contains this text (and the first, the reference)",
    )
    args = parser.parse_args()
    print(f"machine: {machine_description()}; torch threads {torch.get_num_threads()}")
    chosen = [v for v in VARIANTS if args.only is None or args.only in v.label or v is VARIANTS[0]]
    rows = {variant: step_seconds(variant, args.batch_size, args.repeats) for variant in chosen}
    reference = rows[VARIANTS[0]]
    print(f"| variant | ms per step (batch {args.batch_size}) | vs tiny-fast act-only |")
    print("| --- | ---: | ---: |")
    for variant, seconds in rows.items():
        print(f"| {variant.label} | {seconds * 1e3:.0f} | {seconds / reference:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
