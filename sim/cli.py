"""`vla-data`: the dataset commands of `data.cli` plus the simulator's `generate`.

Lives in `sim` because generating needs the simulator, and `data` must not import `sim`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from data.cli import build_parser, run_data_command
from data.schema import DEFAULT_CAMERA_RESOLUTION


def add_sim_commands(commands: argparse._SubParsersAction) -> None:
    generate = commands.add_parser(
        "generate", help="run the scripted experts and write a dataset of successful episodes"
    )
    generate.add_argument("--suite", required=True, help="suite name, e.g. quickstart or tabletop")
    generate.add_argument("--episodes-per-task", type=int, required=True)
    generate.add_argument(
        "--out", type=Path, required=True, help="dataset directory (resumed if present)"
    )
    generate.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    generate.add_argument(
        "--seed", type=int, default=0, help="selects the stream of training scenes"
    )
    generate.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        default=DEFAULT_CAMERA_RESOLUTION,
        metavar=("HEIGHT", "WIDTH"),
    )
    generate.add_argument(
        "--video", action="store_true", help="store cameras as mp4 instead of PNG"
    )
    generate.add_argument("--tasks", nargs="+", help="task indices or names (default: all)")
    generate.add_argument(
        "--render-quality",
        choices=("protocol", "fast"),
        default="protocol",
        help="LIBERO only: 'fast' draws without reflections or multisampling, 1.3-2.2x faster; "
        "its images are not the evaluation protocol's",
    )


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    args = build_parser(add_sim_commands).parse_args(argv)
    console = Console()
    if args.command != "generate":
        return run_data_command(args, console)
    from sim.catalog import get_suite
    from sim.generate import GenerationConfig, generate_dataset, summary_lines

    try:
        suite = get_suite(args.suite)
        tasks = tuple(suite.resolve(task) for task in args.tasks or ())
    except (KeyError, IndexError) as error:
        console.print(f"[bold red]error[/]: {error}")
        return 2
    config = GenerationConfig(
        suite=args.suite,
        episodes_per_task=args.episodes_per_task,
        seed=args.seed,
        image_size=tuple(args.image_size),
        video=args.video,
        tasks=tasks,
        render_quality=args.render_quality,
    )
    try:
        summary = generate_dataset(config, args.out, workers=args.workers)
    except ValueError as error:
        console.print(f"[bold red]error[/]: {error}")
        return 2
    for line in summary_lines(summary):
        console.print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
