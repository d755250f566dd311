"""Images/s of the frozen image encoder (tiny-effnet's EfficientNet-Lite0 at 128 px), by input
memory layout and precision, in one run.

Why it matters: a frozen encoder's per-frame features are computed once per dataset before
training (vla/training/frozen_features.py), and for the 14-task tabletop dataset (55k frames x 2
cameras) that pass is one of the recipe's largest stages; evaluation runs the same encoder on
every policy call. Rows, all on the ImageNet weights tiny-effnet loads (vla/pretrained.py):
- contiguous (NCHW) fp32, the model as timm builds it (what `encode` ran before BatchNorm folding);
- channels-last fp32 without folding;
- BatchNorm folded into the convolutions, channels-last: what `TimmVisionTower.encode` runs for
  a frozen encoder and at inference (`encoding_model()`);
- channels-last bf16 autocast: for reference only (the relative error column says why).
Batch 64 is the feature pass's batch; `--batch-size 4` is a policy call's (2 envs x 2 cameras).

    .venv/bin/python benchmarks/encoder_throughput.py [--batch-size 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description  # noqa: E402

from vla.pretrained import packaged_weights_path  # noqa: E402
from vla.vision import TimmVisionTower  # noqa: E402


def seconds_per_call(rows: dict[str, Callable[[], torch.Tensor]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each row, the rows interleaved within every repeat so that a
    slow stretch of a shared machine falls on all of them alike."""
    for run in rows.values():
        run()  # warm-up: oneDNN picks its kernels on the first call
    times: dict[str, list[float]] = {label: [] for label in rows}
    for _ in range(repeats):
        for label, run in rows.items():
            started = time.perf_counter()
            run()
            times[label].append(time.perf_counter() - started)
    return {label: statistics.median(values) for label, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    # the real weights: folding's gain depends a little on the values (more on random ones)
    weights = packaged_weights_path("efficientnet_lite0")
    tower = TimmVisionTower("tf_efficientnet_lite0", 128, 16, pretrained_path=weights).eval()
    with torch.no_grad():
        folded = tower.encoding_model()  # eval mode, no gradient: the folded copy
    if folded is tower.model:
        raise SystemExit("the encoder did not fold: nothing to compare")
    pixels = torch.rand(args.batch_size, 3, 128, 128) * 2 - 1  # (B, 3, 128, 128) in [-1, 1]
    normalized = tower.normalize(pixels)
    last = normalized.contiguous(memory_format=torch.channels_last)

    def bf16() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return tower.model.forward_features(last)

    rows = {
        "contiguous fp32": lambda: tower.model.forward_features(normalized),
        "channels-last fp32": lambda: tower.model.forward_features(last),
        "BatchNorm folded, channels-last fp32 (encode's path)": lambda: folded.forward_features(
            last
        ),
        "channels-last bf16 autocast": bf16,
    }
    with torch.inference_mode():
        reference = tower.model.forward_features(normalized)
        errors = {
            label: float((run().float() - reference).norm() / reference.norm())
            for label, run in rows.items()
        }
        seconds = seconds_per_call(rows, args.repeats)
    print(f"# {machine_description()}, {torch.get_num_threads()} threads")
    print(f"batch {args.batch_size}, median of {args.repeats}")
    print("| input | images/s | vs contiguous fp32 | relative error |")
    print("| --- | ---: | ---: | ---: |")
    base = seconds["contiguous fp32"]
    for label in rows:
        print(
            f"| {label} | {args.batch_size / seconds[label]:.0f} | {base / seconds[label]:.2f}x "
            f"| {errors[label]:.1e} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
