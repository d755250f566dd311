"""Evaluate a checkpoint by closed-loop rollouts in simulation.

    python eval.py --checkpoint outputs/runs/quickstart/export --suite quickstart
    python eval.py --checkpoint DIR --suite tabletop --tasks 0 3 --episodes-per-task 20 --envs 4
    python eval.py --checkpoint DIR --suite quickstart --think --reasoning-every 4
    python eval.py --expert --suite quickstart        # the scripted expert: the success ceiling

Each task runs on its fixed evaluation init states 0..N-1 with the suite's episode length. The
report (report.json, summary.md, success.png, videos/) goes to --out, by default
<checkpoint>/eval/<suite>. This file only wires the parts together: the rollout protocol is
`sim.runner.EnvRunner`, the policy `vla.policy.VLAPolicy`, the outputs `sim.report`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, help="an exported checkpoint directory")
    source.add_argument(
        "--expert", action="store_true", help="evaluate the scripted expert instead (our suites)"
    )
    parser.add_argument("--suite", required=True, help="e.g. quickstart, tabletop, libero_spatial")
    parser.add_argument("--tasks", nargs="+", help="task indices or names (default: all)")
    parser.add_argument(
        "--list-tasks", action="store_true", help="print the suite's tasks with their indices"
    )
    parser.add_argument("--episodes-per-task", type=int, default=50, help="init states 0..N-1")
    parser.add_argument("--envs", type=int, default=2, help="parallel environment processes")
    parser.add_argument("--out", type=Path, help="report directory")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--image-size",
        type=int,
        help="camera resolution the envs render (default: the checkpoint's, from its "
        "config.json observation spec; the expert: the suites' default)",
    )
    rollout = parser.add_argument_group("rollout")
    rollout.add_argument(
        "--n-action-steps", type=int, help="actions executed per chunk (default: horizon // 2)"
    )
    rollout.add_argument(
        "--temporal-ensemble",
        type=float,
        metavar="K",
        help="predict every step and average overlapping chunks with weights exp(-K i)",
    )
    rollout.add_argument("--think", action="store_true", help="generate the chain of thought")
    rollout.add_argument(
        "--reasoning-every",
        type=int,
        default=1,
        metavar="K",
        help="think mode: regenerate the chain every K chunks, reuse it in between",
    )
    rollout.add_argument(
        "--feature-cache-every",
        type=int,
        metavar="K",
        help="expert blocks refresh every K denoising steps and reuse their output in between",
    )
    rollout.add_argument(
        "--noise-scale",
        type=float,
        default=1.0,
        help="sampling temperature: initial noise * this (0: deterministic, the flow from its mean)",
    )
    rollout.add_argument(
        "--train-scenes",
        action="store_true",
        help="roll out on training scenes 0..N-1 instead of the evaluation init states "
        "(the gap between the two separates fitting from generalization)",
    )
    rollout.add_argument("--videos-per-task", type=int, default=1, help="episodes filmed per task")
    rollout.add_argument(
        "--expert-ceiling",
        action="store_true",
        help="also run the scripted expert on the same episodes and report it as the ceiling",
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_tasks:
        return list_tasks(args.suite)
    if args.checkpoint is None and not args.expert:
        parser.error("one of --checkpoint or --expert is required (or --list-tasks)")
    from sim.report import write_report
    from sim.runner import EnvRunner

    if args.checkpoint is not None and not (args.checkpoint / "config.json").is_file():
        print(
            f"error: {args.checkpoint} is not a checkpoint directory (no config.json); "
            "pass the `export/` directory train.py printed",
            file=sys.stderr,
        )
        return 2
    out = args.out or (
        (args.checkpoint / "eval" / args.suite) if args.checkpoint else Path("outputs/eval/expert")
    )
    policy = None
    if args.checkpoint is not None:
        from vla.policy import VLAPolicy

        try:
            policy = VLAPolicy.from_pretrained(
                args.checkpoint,
                device=args.device,
                n_action_steps=args.n_action_steps,
                temporal_ensemble=args.temporal_ensemble,
                think=args.think,
                reasoning_every=args.reasoning_every,
                feature_cache_every=args.feature_cache_every,
                noise_scale=args.noise_scale,
            )
        except ValueError as error:  # bad rollout settings, or thinking without reasoning
            print(f"error: {error}", file=sys.stderr)
            return 2
    # The envs render what the policy was trained on (its checkpoint's observation spec).
    try:
        image_size = (
            (args.image_size, args.image_size) if args.image_size else camera_resolution(policy)
        )
    except ValueError as error:  # cameras of different sizes: the envs render one size
        print(f"error: {args.checkpoint}: {error}; pass --image-size", file=sys.stderr)
        return 2
    runner_options: dict[str, Any] = dict(
        tasks=args.tasks,
        episodes_per_task=args.episodes_per_task,
        num_envs=args.envs,
        image_size=image_size,
        scenes="train" if args.train_scenes else "eval",
        progress=not args.no_progress,
    )
    try:
        runner = EnvRunner(
            args.suite,
            video_episodes_per_task=args.videos_per_task,
            oracle_expert=args.expert,
            # The expert reads privileged state: without videos nothing needs rendering.
            render_images=not (args.expert and args.videos_per_task == 0),
            **runner_options,
        )
    except (KeyError, ValueError) as error:
        print(f"error: {error.args[0] if error.args else error}", file=sys.stderr)
        return 2
    with runner:
        if policy is None:
            metrics = runner.run_expert(video_dir=out / "videos")
        else:
            metrics = runner.run(policy, policy.new_chunker, video_dir=out / "videos")
    report = metrics.to_dict()
    report["checkpoint"] = str(args.checkpoint) if args.checkpoint else "scripted expert"
    report["image_size"] = list(image_size)
    if policy is not None:
        if args.feature_cache_every:
            report["settings"]["feature_cache_every"] = args.feature_cache_every
        report["settings"]["noise_scale"] = args.noise_scale
    expert = None
    if args.expert_ceiling and policy is not None:
        with EnvRunner(
            args.suite, oracle_expert=True, render_images=False, **runner_options
        ) as expert_runner:
            expert = expert_runner.run_expert().to_dict()
    paths = write_report(report, out, expert=expert)
    print_summary(report, expert, paths)
    return 0


def camera_resolution(policy: Any) -> tuple[int, int]:
    """(height, width) to render: the checkpoint's cameras', or the data default for the expert."""
    if policy is None:
        from data.schema import DEFAULT_CAMERA_RESOLUTION

        return DEFAULT_CAMERA_RESOLUTION
    return policy.processor.observation_spec.resolution


def list_tasks(suite: str) -> int:
    from sim.catalog import get_suite

    try:
        spec = get_suite(suite)
    except (KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for index, task in enumerate(spec.tasks):
        print(f"{index:3d}  {task}")
    return 0


def print_summary(report: dict, expert: dict | None, paths: dict[str, Path]) -> None:
    from rich.console import Console
    from rich.table import Table

    from sim.report import expert_rates

    expert_by_task = expert_rates(expert)
    table = Table(title=f"{report['suite']}: success over fixed init states")
    for column in ("task", "success", "95% CI", "episodes", "mean length", "expert"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for row in [*report["tasks"], report["overall"]]:
        rate = expert_by_task.get(row["task"])
        table.add_row(
            row["task"],
            f"{row['success_rate']:.0%}",
            f"{row['wilson_low']:.0%}–{row['wilson_high']:.0%}",
            str(row["episodes"]),
            f"{row['mean_length']:.0f}",
            "-" if rate is None else f"{rate:.0%}",
            style="bold" if row["task"] == "overall" else None,
        )
    console = Console()
    console.print(table)
    for kind, latency in report["latency"].items():
        if "total_ms" in latency:
            console.print(
                f"policy ({kind}): {latency['total_ms']:.1f} ms per call, "
                f"{latency['total_ms_per_chunk']:.1f} ms per chunk at mean batch {latency['mean_batch']:.1f}"
            )
    console.print(
        f"env: {report['env_steps_per_second']:.1f} steps/s over {report['num_envs']} envs; "
        f"crashes retried: {report['crashes']}; wall time {report['wall_seconds']:.0f} s"
    )
    console.print(f"report: {paths['report']}  summary: {paths['summary']}  plot: {paths['plot']}")
    videos = [e["video"] for e in report["episodes"] if e.get("video")]
    if videos:
        console.print(f"videos: {Path(videos[0]).parent}/ ({len(videos)} files)")


if __name__ == "__main__":
    sys.exit(main())
