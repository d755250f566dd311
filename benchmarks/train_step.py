"""Cost of one training step (forward + backward + AdamW) for the CPU model configs.

Compares, in one run and on the same random batch: `tiny` (64 image tokens per camera) vs
`tiny-fast` (16), each with a reasoning chain of 80 tokens on every sample and without any
(act-only training, `processor.reasoning_dropout=1.0`). This is what sets how many steps the
quickstart can afford in its time budget.

    .venv/bin/python benchmarks/train_step.py [--batch-size 32] [--repeats 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description  # noqa: E402

from vla.config import VLAConfig  # noqa: E402
from vla.model import ModelInputs, VLAModel  # noqa: E402


def batch(config: VLAConfig, size: int, reasoning_tokens: int) -> ModelInputs:
    generator = torch.Generator().manual_seed(0)
    images = {
        camera: torch.rand(size, 3, config.image_size, config.image_size, generator=generator) * 2
        - 1
        for camera in config.cameras
    }
    reasoning = {}
    if reasoning_tokens:
        reasoning = {
            "reasoning_ids": torch.randint(3, 500, (size, reasoning_tokens), generator=generator),
            "reasoning_mask": torch.ones(size, reasoning_tokens, dtype=torch.bool),
        }
    return ModelInputs(
        images=images,
        text_ids=torch.randint(3, 500, (size, 12), generator=generator),
        text_mask=torch.ones(size, 12, dtype=torch.bool),
        state=torch.randn(size, config.state_dim, generator=generator),
        **reasoning,
    )


def step_seconds(name: str, reasoning_tokens: int, batch_size: int, repeats: int) -> float:
    torch.manual_seed(0)
    config = VLAConfig.named(name)
    model = VLAModel(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = batch(config, batch_size, reasoning_tokens)
    actions = torch.randn(batch_size, config.action_horizon, config.action_dim)
    times = []
    for index in range(repeats + 2):
        started = time.perf_counter()
        loss = model.compute_loss(inputs, actions)["loss"]
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
    args = parser.parse_args()
    print(f"machine: {machine_description()}; torch threads {torch.get_num_threads()}")
    rows = {}
    for name in ("tiny", "tiny-fast"):
        for reasoning_tokens in (80, 0):
            rows[(name, reasoning_tokens)] = step_seconds(
                name, reasoning_tokens, args.batch_size, args.repeats
            )
    reference = rows[("tiny", 80)]
    print(
        f"| config | reasoning tokens | ms per step (batch {args.batch_size}) | vs tiny + reasoning |"
    )
    print("| --- | ---: | ---: | ---: |")
    for (name, tokens), seconds in rows.items():
        print(f"| {name} | {tokens} | {seconds * 1e3:.0f} | {reference / seconds:.1f}x faster |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
