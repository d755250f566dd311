"""The pi0-size config on this CPU: it builds in bf16 within its memory, saves and loads (the
loading process's own peak RSS, in a fresh child), one chunk runs, and one training step runs
with activation checkpointing and LoRA on the backbone.

What a GPU window cannot afford to find out: whether the 3.2B-parameter config builds, what one
chunk costs and where (prefix vs denoising), and whether a training step fits in memory. Random
weights; 2 views at the config's resolution, horizon 50, 10 flow steps, batch 1. Peak RSS is the
process's high-water mark after each stage (it only grows).

    .venv/bin/python benchmarks/pi0_cpu.py [--skip-train] [--save-load]   # --save-load: 6.5 GB on disk
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import high_water_gib, machine_description, median_seconds  # noqa: E402

from vla.config import VLAConfig  # noqa: E402
from vla.model import ModelInputs, VLAModel  # noqa: E402
from vla.training.lora import add_lora  # noqa: E402


def bf16_inputs(config: VLAConfig, batch: int) -> ModelInputs:
    fake = ModelInputs.fake(config, batch=batch, text_lengths=(16,) * batch)
    return ModelInputs(
        images={camera: pixels.bfloat16() for camera, pixels in fake.images.items()},
        text_ids=fake.text_ids,
        text_mask=fake.text_mask,
        state=fake.state.bfloat16(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument(
        "--save-load", action="store_true", help="save the checkpoint and load it in a child"
    )
    parser.add_argument("--lora-rank", type=int, default=16)
    args = parser.parse_args()
    print(f"machine: {machine_description()}; torch threads {torch.get_num_threads()}")
    torch.manual_seed(0)
    config = VLAConfig.named("pi0", action_horizon=50, num_inference_steps=10)
    started = time.perf_counter()
    model = VLAModel.build(config, "cpu", torch.bfloat16).eval()
    parameters = sum(p.numel() for p in model.parameters())
    expert = sum(p.numel() for p in model.expert.parameters())
    print(
        f"build: {parameters / 1e6:.0f}M parameters (expert {expert / 1e6:.0f}M), bf16, "
        f"{time.perf_counter() - started:.0f} s, peak RSS {high_water_gib():.1f} GiB"
    )

    inputs = bf16_inputs(config, batch=1)
    noise = torch.randn(1, 50, config.action_dim, dtype=torch.bfloat16)
    if args.save_load:
        save_and_load(model, config, inputs, noise)
    with torch.no_grad():
        prefix = median_seconds(lambda: model.encode_prefix(inputs), repeats=2)
        chunk = median_seconds(lambda: model.sample_actions(inputs, noise=noise), repeats=2)
        actions = model.sample_actions(inputs, noise=noise)
    assert torch.isfinite(actions).all()
    print(
        f"chunk (batch 1, KV cache, 10 steps): {chunk:.2f} s, of which the prefix {prefix:.2f} s "
        f"({prefix / chunk:.0%}); peak RSS {high_water_gib():.1f} GiB"
    )
    if args.skip_train:
        return

    assert config.activation_checkpointing  # the pi0 config trains with it
    trainable = add_lora(model.backbone, rank=args.lora_rank, alpha=2 * args.lora_rank)
    trainable_total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    batch = bf16_inputs(config, batch=2)
    targets = torch.randn(2, 50, config.action_dim, dtype=torch.bfloat16)
    started = time.perf_counter()
    loss = model.compute_loss(batch, targets)["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    seconds = time.perf_counter() - started
    assert torch.isfinite(loss)
    print(
        f"training step (batch 2, LoRA rank {args.lora_rank} on the backbone: {trainable / 1e6:.1f}M "
        f"adapter parameters, {trainable_total / 1e6:.0f}M trainable with the expert; activation "
        f"checkpointing): {seconds:.1f} s, loss {loss.item():.3f}, peak RSS {high_water_gib():.1f} GiB"
    )


# Run from the repository root; the child reports its own high-water mark (common.high_water_gib).
LOAD_CHILD = """
import sys, time, torch
sys.path.insert(0, "benchmarks")
from common import high_water_gib
from vla.checkpoint import load_checkpoint
from vla.model import ModelInputs
before = high_water_gib()
started = time.perf_counter()
model = load_checkpoint(sys.argv[1]).model
seconds = time.perf_counter() - started
images, text_ids, text_mask, state, noise = torch.load(sys.argv[2])
inputs = ModelInputs(images=images, text_ids=text_ids, text_mask=text_mask, state=state)
with torch.no_grad():
    same = torch.equal(model.sample_actions(inputs, noise=noise), torch.load(sys.argv[3]))
print(f"{seconds:.1f} {before:.2f} {high_water_gib():.2f} {same}")
"""


def save_and_load(
    model: VLAModel, config: VLAConfig, inputs: ModelInputs, noise: torch.Tensor
) -> None:
    """Save the bf16 model as training exports it, then load it in a fresh process: the load's
    time and peak RSS (which must stay near one copy of the weights, 6.5 GB, not two), and
    whether the loaded model's chunk equals the saved model's bit for bit."""
    from vla.checkpoint import save_checkpoint

    stats = {
        key: {"mean": np.zeros(dim), "std": np.ones(dim), "min": -np.ones(dim),
              "max": np.ones(dim), "q01": -np.ones(dim), "q99": np.ones(dim),
              "count": np.array([1])}
        for key, dim in (("observation.state", config.state_dim), ("action", config.action_dim))
    }  # fmt: skip
    with torch.no_grad():
        expected = model.sample_actions(inputs, noise=noise)
    outputs = Path(__file__).resolve().parents[1] / "outputs"  # the disk, not a RAM-backed /tmp
    outputs.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=outputs) as tmp:
        started = time.perf_counter()
        directory = save_checkpoint(Path(tmp) / "pi0", model, config, stats)
        saved_s = time.perf_counter() - started
        size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) / 2**30
        tensors = (inputs.images, inputs.text_ids, inputs.text_mask, inputs.state, noise)
        torch.save(tensors, Path(tmp) / "inputs.pt")
        torch.save(expected, Path(tmp) / "expected.pt")
        done = subprocess.run(
            [sys.executable, "-c", LOAD_CHILD, str(directory), f"{tmp}/inputs.pt", f"{tmp}/expected.pt"],
            capture_output=True, text=True, check=True, cwd=outputs.parent,
        )  # fmt: skip
    load_s, before, load_peak, same = done.stdout.split()[-4:]
    print(
        f"save: {size:.2f} GiB in {saved_s:.0f} s (peak RSS so far {high_water_gib():.1f} GiB); load in "
        f"a fresh process: {float(load_s):.0f} s, its peak RSS {float(load_peak):.1f} GiB "
        f"({float(before):.1f} GiB after imports); loaded chunk equals the saved model's: {same}"
    )


if __name__ == "__main__":
    main()
