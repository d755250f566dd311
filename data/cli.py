"""`vla-data`: inspect and convert datasets from the command line."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from data.reader import DatasetError, LeRobotDatasetReader

STAT_COLUMNS = ("mean", "std", "min", "max", "q01", "q50", "q99")
CHANNEL_NAMES = ("r", "g", "b")  # a camera's statistics are per channel, in [0, 1]


def info(path: Path, decode: bool, console: Console, full: bool = False) -> int:
    """Print what a dataset holds and check it (`LeRobotDatasetReader.validate`: quick, or with
    `full` every frame of every camera decoded); returns the process exit code."""
    from rich.progress import Progress

    try:
        reader = LeRobotDatasetReader(path)
        with Progress(console=console, transient=True, disable=not (decode or full)) as progress:
            frames = progress.add_task(
                "decoding every frame" if full else "decoding",
                total=reader.num_frames * len(reader.visual_keys),
            )
            reader.validate(
                decode=decode, full=full, progress=lambda n: progress.advance(frames, n)
            )
    except DatasetError as error:
        console.print(f"[bold red]invalid dataset[/]: {error}")
        return 1
    lengths = np.array([episode.length for episode in reader.episodes])
    console.print(f"[bold]{reader.root}[/]  (LeRobotDataset {reader.version}, {reader.fps} fps)")
    console.print(
        f"episodes: {reader.num_episodes}   frames: {reader.num_frames}   "
        f"duration: {reader.num_frames / reader.fps:.1f} s   tasks: {len(reader.tasks)}"
    )
    if len(lengths):
        console.print(
            f"episode length: min {lengths.min()}  mean {lengths.mean():.1f}  max {lengths.max()}"
        )

    episodes_per_task = Counter(task for episode in reader.episodes for task in episode.tasks)
    tasks = Table(title="tasks", title_justify="left")
    tasks.add_column("index", justify="right")
    tasks.add_column("task")
    tasks.add_column("episodes", justify="right")
    for index, task in enumerate(reader.tasks):
        tasks.add_row(str(index), task, str(episodes_per_task.get(task, 0)))
    console.print(tasks)

    features = Table(title="features", title_justify="left")
    for column in ("key", "dtype", "shape"):
        features.add_column(column)
    for key, feature in reader.features.items():
        features.add_row(key, feature.dtype, str(tuple(feature.shape)))
    console.print(features)

    stats = reader.stats
    summary = Table(title="stats", title_justify="left")
    for column in ("feature", "dim", *STAT_COLUMNS):
        summary.add_column(column, justify="left" if column in ("feature", "dim") else "right")
    for key in [*reader.numeric_keys, *reader.visual_keys]:
        if key not in stats:
            continue
        feature = reader.features[key]
        size = len(CHANNEL_NAMES) if feature.is_visual else feature.size
        names = CHANNEL_NAMES if feature.is_visual else feature.names
        names = names if names and len(names) == size else None
        columns = {name: np.asarray(stats[key][name]).reshape(-1) for name in STAT_COLUMNS}
        for dim in range(size):
            summary.add_row(
                key if dim == 0 else "",
                names[dim] if names else str(dim),
                *(f"{columns[name][dim]:.4g}" for name in STAT_COLUMNS),
                end_section=dim == size - 1,
            )
    console.print(summary)
    unsummarized = [key for key in reader.visual_keys if key not in stats]
    if unsummarized:
        console.print(
            f"no statistics for {unsummarized}: meta/episodes lacks their per-episode stats "
            "(written by an older writer)"
        )
    if full:
        checked = " (every frame of every camera decoded)"
    elif decode:
        checked = (
            " (first image of every episode and every video decoded; --full decodes every frame)"
        )
    else:
        checked = " (media not decoded)"
    console.print("[green]valid[/]" + checked)
    return 0


def rebuild(path: Path, console: Console) -> int:
    """`vla-data stats`: rewrite the per-episode stats columns and meta/stats.json."""
    from rich.progress import Progress

    from data.writer import rebuild_stats

    try:
        reader = LeRobotDatasetReader(path)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("episodes", total=reader.num_episodes)
            stats = rebuild_stats(path, lambda n: progress.advance(task, n))
    except DatasetError as error:
        console.print(f"[bold red]invalid dataset[/]: {error}")
        return 1
    console.print(
        f"wrote per-episode stats of {reader.num_episodes} episodes and {path}/meta/stats.json "
        f"({len(stats)} features)"
    )
    return 0


def add_data_commands(commands: argparse._SubParsersAction) -> None:
    """The dataset commands; `sim.cli` adds the simulator's (generate) to the same program."""
    info_parser = commands.add_parser("info", help="summarize and validate a dataset")
    info_parser.add_argument("path", type=Path, help="dataset directory (holds meta/info.json)")
    decoding = info_parser.add_mutually_exclusive_group()
    decoding.add_argument(
        "--no-decode",
        action="store_true",
        help="skip decoding images/videos (faster, less thorough)",
    )
    decoding.add_argument(
        "--full",
        action="store_true",
        help="decode every frame of every camera, not only the first image of each episode "
        "(slow; names the episode and frame of the first bad one)",
    )

    stats_parser = commands.add_parser(
        "stats",
        help="recompute per-episode and dataset statistics (decodes every frame once); for "
        "datasets written before the writer kept per-episode stats",
    )
    stats_parser.add_argument("path", type=Path, help="dataset directory")

    import_parser = commands.add_parser("import-libero", help="convert LIBERO HDF5 demonstrations")
    import_parser.add_argument("files", type=Path, nargs="+", help="LIBERO *_demo.hdf5 files")
    import_parser.add_argument("--out", type=Path, required=True, help="output dataset directory")
    import_parser.add_argument(
        "--video", action="store_true", help="store cameras as mp4 instead of PNG"
    )
    import_parser.add_argument(
        "--image-size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), help="resize images"
    )

    render_parser = commands.add_parser(
        "render-episode", help="draw an episode's reasoning labels on its frames (mp4, or one PNG)"
    )
    render_parser.add_argument("path", type=Path, help="dataset directory")
    render_parser.add_argument("--episode", type=int, required=True)
    render_parser.add_argument(
        "--out", type=Path, required=True, help="ep.mp4, or a .png with --frame"
    )
    render_parser.add_argument("--camera", default="agentview")
    render_parser.add_argument("--scale", type=int, default=4, help="upscaling factor (nearest)")
    render_parser.add_argument("--frame", type=int, help="write only this frame, as PNG")

    synth_parser = commands.add_parser(
        "synthetic-libero", help="write a small LIBERO-layout HDF5 file (for trying the importer)"
    )
    synth_parser.add_argument("path", type=Path)
    synth_parser.add_argument("--demos", type=int, default=5)
    synth_parser.add_argument("--length", type=int, default=40)
    synth_parser.add_argument("--seed", type=int, default=0)


def build_parser(
    add_more_commands: Callable[[argparse._SubParsersAction], None] | None = None,
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vla-data", description="Create, inspect and convert vla datasets."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_data_commands(commands)
    if add_more_commands is not None:
        add_more_commands(commands)
    return parser


def run_data_command(args: argparse.Namespace, console: Console) -> int:
    if args.command == "info":
        return info(args.path, decode=not args.no_decode, console=console, full=args.full)
    if args.command == "stats":
        return rebuild(args.path, console)
    if args.command == "import-libero":
        from data.libero_import import LiberoImportError, import_libero_hdf5

        missing = [str(path) for path in args.files if not path.exists()]
        if missing:
            console.print(f"[bold red]error[/]: no such file(s): {', '.join(missing)}")
            return 2
        try:
            summary = import_libero_hdf5(
                args.files,
                args.out,
                video=args.video,
                image_size=tuple(args.image_size) if args.image_size else None,
            )
        except LiberoImportError as error:
            console.print(f"[bold red]error[/]: {error}")
            return 2
        console.print(f"imported {summary}")
        return 0
    if args.command == "render-episode":
        from data.render import render_episode, save_frame_png

        try:
            if args.frame is not None:
                path = save_frame_png(
                    args.path,
                    args.episode,
                    args.frame,
                    args.out,
                    camera=args.camera,
                    scale=args.scale,
                )
                console.print(f"wrote {path}")
            else:
                summary = render_episode(
                    args.path, args.episode, args.out, camera=args.camera, scale=args.scale
                )
                console.print(
                    f"wrote {summary.path} ({summary.frames} frames, {summary.size[1]}x{summary.size[0]})"
                )
        except (DatasetError, ValueError) as error:
            console.print(f"[bold red]error[/]: {error}")
            return 2
        return 0
    if args.command == "synthetic-libero":
        from data.synthetic_libero import write_synthetic_libero_hdf5

        path = write_synthetic_libero_hdf5(
            args.path, num_demos=args.demos, length=args.length, seed=args.seed
        )
        console.print(f"wrote {path}")
        return 0
    raise ValueError(f"not a data command: {args.command!r}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_data_command(args, Console())


if __name__ == "__main__":
    sys.exit(main())
