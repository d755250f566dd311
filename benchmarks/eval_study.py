"""Success and latency of one checkpoint under different rollout settings, in one run.

Variants (all on the same episodes: each task's init states 0..N-1):
  act n=1 / n=4 / n=8        act-only, executing 1, 4 or 8 actions of each 10-action chunk
  act n=4 + feature cache    expert blocks refreshed every 2nd denoising step, reused between
  think n=4                  the chain of thought regenerated for every chunk
  think n=4, reuse x4        regenerated every 4th chunk, fed back unchanged in between

    .venv/bin/python benchmarks/eval_study.py --checkpoint outputs/runs/quickstart/export
    .venv/bin/python benchmarks/eval_study.py --checkpoint DIR --episodes-per-task 50 --out study.json

Prints a markdown table (docs/results.md holds the recorded one) and writes every variant's
full report to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description  # noqa: E402

from sim.runner import EnvRunner  # noqa: E402
from vla.policy import VLAPolicy  # noqa: E402
from vla.robot.chunker import ChunkerConfig  # noqa: E402


@dataclass(frozen=True)
class Variant:
    name: str
    chunking: ChunkerConfig
    feature_cache_every: int | None = None


VARIANTS = (
    Variant("act, n_action_steps=1", ChunkerConfig(n_action_steps=1)),
    Variant("act, n_action_steps=4", ChunkerConfig(n_action_steps=4)),
    Variant("act, n_action_steps=8", ChunkerConfig(n_action_steps=8)),
    Variant("act, n=4, feature cache every 2", ChunkerConfig(n_action_steps=4), 2),
    Variant("think every chunk, n=4", ChunkerConfig(n_action_steps=4, think=True)),
    Variant(
        "think, reuse 4 chunks, n=4",
        ChunkerConfig(n_action_steps=4, think=True, reasoning_every=4),
    ),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--suite", default="quickstart")
    parser.add_argument("--episodes-per-task", type=int, default=10)
    parser.add_argument("--envs", type=int, default=2)
    parser.add_argument(
        "--image-size", type=int, help="default: the checkpoint's camera resolution (config.json)"
    )
    parser.add_argument(
        "--train-scenes",
        action="store_true",
        help="training scenes instead of evaluation init states (in-distribution success)",
    )
    parser.add_argument("--noise-scale", type=float, default=1.0)
    parser.add_argument("--variants", nargs="+", type=int, help="indices into the variant list")
    parser.add_argument("--out", type=Path, default=Path("outputs/eval_study.json"))
    args = parser.parse_args()
    print(f"machine: {machine_description()}")
    chosen = [VARIANTS[i] for i in args.variants] if args.variants else list(VARIANTS)
    rows, reports = [], {}
    with EnvRunner(
        args.suite,
        episodes_per_task=args.episodes_per_task,
        num_envs=args.envs,
        image_size=(
            (args.image_size, args.image_size)
            if args.image_size
            else VLAPolicy.from_pretrained(args.checkpoint).processor.observation_spec.resolution
        ),
        scenes="train" if args.train_scenes else "eval",
        progress=False,
    ) as runner:
        for variant in chosen:
            policy = VLAPolicy.from_pretrained(
                args.checkpoint,
                feature_cache_every=variant.feature_cache_every,
                noise_scale=args.noise_scale,
                **variant.chunking.to_dict(),
            )
            started = time.perf_counter()
            report = runner.run(policy, policy.new_chunker).to_dict()
            reports[variant.name] = report
            rows.append(_row(variant.name, report, time.perf_counter() - started))
            print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"machine": machine_description(), "variants": reports}, indent=2)
    )
    print()
    print(
        "| variant | success (95% CI) | mean length | policy ms per call | ms per chunk | policy calls | wall s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(row)
    return 0


def _row(name: str, report: dict, wall: float) -> str:
    overall = report["overall"]
    calls = sum(kind["calls"] for kind in report["latency"].values())
    total_ms = sum(kind["total_ms"] * kind["calls"] for kind in report["latency"].values())
    per_chunk = sum(
        kind["total_ms_per_chunk"] * kind["calls"] for kind in report["latency"].values()
    )
    return (
        f"| {name} | {overall['success_rate']:.0%} ({overall['successes']}/{overall['episodes']}; "
        f"{overall['wilson_low']:.0%}–{overall['wilson_high']:.0%}) | {overall['mean_length']:.0f} "
        f"| {total_ms / max(calls, 1):.1f} | {per_chunk / max(calls, 1):.1f} | {calls} | {wall:.0f} |"
    )


if __name__ == "__main__":
    sys.exit(main())
