"""Success table of the scripted experts over every task's 50 evaluation init states.

    python -m sim.expert_report --suite quickstart --suite tabletop --out docs/expert_success.md
    python -m sim.expert_report --suite libero_object --suite libero_spatial --out docs/libero_expert_success.md

Runs without rendering (the expert needs no images), one task per worker process. On LIBERO the
init states are the published evaluation ones, settle steps and episode lengths the protocol's
(sim/libero_env.py); a task whose goal has no primitive yet fails with UnsupportedGoalError.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.env import NUM_INIT_STATES
from sim.parent_watch import ParentWatch


@dataclass(frozen=True)
class TaskResult:
    suite: str
    task: str
    family: str
    successes: int
    episodes: int
    mean_length: float
    failed_init_states: tuple[int, ...]
    unsupported: str = ""  # why the expert cannot attempt the task (no primitive for its goal)


def evaluate_expert(suite: str, task: str, episodes: int = NUM_INIT_STATES) -> TaskResult:
    """Run the expert once from each of the task's first `episodes` evaluation init states.

    A LIBERO task whose goal has no primitive yet is reported as such (no episodes), so one run
    can cover a whole suite."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from sim.catalog import make
    from sim.expert import rollout
    from sim.libero_expert import UnsupportedGoalError

    env = make(suite, task, render_images=False)
    family = task_family(env, suite)
    successes, lengths, failed = 0, [], []
    episodes = min(episodes, getattr(env, "num_init_states", episodes))
    try:
        for init_state in range(episodes):
            success = rollout(env, expert_seed=init_state, init_state=init_state)
            successes += int(success)
            lengths.append(env.steps)
            if not success:
                failed.append(init_state)
    except UnsupportedGoalError as error:
        return TaskResult(suite, task, family, 0, 0, 0.0, (), unsupported=str(error))
    finally:
        env.close()
    return TaskResult(
        suite, task, family, successes, episodes, sum(lengths) / len(lengths), tuple(failed)
    )


def task_family(env: Any, suite: str) -> str:
    """Our tasks name their family (pick_place, stack, ...); a LIBERO suite is one family."""
    task = getattr(env, "task", None)
    return str(task.family) if task is not None else suite


def markdown_table(results: list[TaskResult], seconds: float, workers: int) -> str:
    init_states = max((result.episodes for result in results if not result.unsupported), default=0)
    lines = [
        "# Scripted expert success",
        "",
        f"{datetime.date.today().isoformat()} · {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores · `python -m sim.expert_report` ({workers} workers, {seconds / 60:.1f} min)",
        "",
        f"Each task's expert runs once from each of its first {init_states} fixed evaluation "
        "init states (`reset(options={'init_state': i})`), with the demonstration action noise on.",
        "",
        "| suite | task | family | success | mean steps | failed init states |",
        "| --- | --- | --- | ---: | ---: | --- |",
    ]
    attempted = [result for result in results if not result.unsupported]
    for result in results:
        if result.unsupported:
            lines.append(
                f"| {result.suite} | {result.task} | {result.family} | no primitive | – | "
                f"{result.unsupported.split(':')[0]} |"
            )
            continue
        rate = 100 * result.successes / result.episodes
        failed = ", ".join(map(str, result.failed_init_states)) or "—"
        lines.append(
            f"| {result.suite} | {result.task} | {result.family} | {result.successes}/{result.episodes} ({rate:.0f}%) "
            f"| {result.mean_length:.0f} | {failed} |"
        )
    total = sum(result.successes for result in attempted)
    count = sum(result.episodes for result in attempted)
    lines.append("")
    if attempted:
        lines.append(
            f"Overall: {total}/{count} ({100 * total / count:.1f}%) over {len(attempted)} tasks; "
            f"lowest task: {min(100 * r.successes / r.episodes for r in attempted):.0f}%."
        )
    if len(attempted) < len(results):
        lines.append(
            f"{len(results) - len(attempted)} tasks have goals the scripted expert has no "
            "primitive for yet (the last column names the predicate)."
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", action="append", required=True)
    parser.add_argument("--episodes", type=int, default=NUM_INIT_STATES)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from sim.catalog import suite_tasks

    jobs = [(suite, task) for suite in args.suite for task in suite_tasks(suite)]
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=args.workers,
        mp_context=context,
        initializer=ParentWatch.start,  # workers end with this process (sim/parent_watch.py)
        initargs=(ParentWatch.here(context.get_start_method()),),
    ) as pool:
        futures = [pool.submit(evaluate_expert, suite, task, args.episodes) for suite, task in jobs]
        results = []
        for future in futures:
            result = future.result()
            results.append(result)
            outcome = (
                "no primitive" if result.unsupported else f"{result.successes}/{result.episodes}"
            )
            print(f"{result.suite:<11} {result.task:<72} {outcome}", flush=True)
    report = markdown_table(results, time.perf_counter() - start, args.workers)
    if args.out:
        args.out.write_text(report)
        print(f"wrote {args.out}")
    else:
        print(report)


if __name__ == "__main__":
    main()
