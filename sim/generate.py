"""Generate a demonstration dataset: run the scripted experts, keep the successful episodes.

Reproducible from its seed: training episode j of a task is scene seed `seed * SEED_STRIDE + j`,
and episodes are committed in seed order whatever the number of workers (results that finish
early wait for the ones before them). So the same command gives the same dataset on 1 or 8
workers, and an interrupted run, started again with the same command, resumes where it stopped:
`meta/generation.json` records which task/seed each committed episode came from and which seeds
failed, and is written before each episode's commit (entries past the committed count are dropped
on load, as the writer drops uncommitted rows).
"""

from __future__ import annotations

import atexit
import collections
import hashlib
import json
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from data import layout
from data.features import default_features
from data.schema import (
    ACTION_KEY,
    DEFAULT_CAMERA_RESOLUTION,
    DEFAULT_CAMERAS,
    STATE_KEY,
    image_key,
)
from data.writer import LeRobotDatasetWriter
from sim.parent_watch import ParentWatch

SEED_STRIDE = 1_000_003
GENERATION_PATH = "meta/generation.json"
FPS = 20


@dataclass(frozen=True)
class GenerationConfig:
    suite: str
    episodes_per_task: int
    seed: int = 0
    image_size: tuple[int, int] = DEFAULT_CAMERA_RESOLUTION
    video: bool = False
    tasks: tuple[str, ...] = ()  # empty: every task of the suite
    max_attempts_factor: int = 3  # give up on a task after factor * N + 10 attempts
    render_quality: str = "protocol"  # LIBERO only: "fast" draws cheaper frames (sim.libero_env)


@dataclass(frozen=True)
class EpisodeJob:
    suite: str
    task: str
    seed: int
    image_size: tuple[int, int]
    render_quality: str = "protocol"


@dataclass
class ExpertEpisode:
    """One scripted-expert rollout as a worker sends it back; `columns` only on success (a
    failed episode is recorded by its seed and never written)."""

    task: str
    seed: int
    success: bool
    length: int
    columns: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationSummary:
    episodes: int
    frames: int
    failures: dict[str, int]
    attempts: dict[str, int]
    skipped_existing: int


# Settings added after datasets were first written, with the value those datasets were made
# with: resuming one of them compares against this value instead of calling it different.
_SETTINGS_BEFORE_RECORDED = {"render_quality": "protocol"}

# ---------------------------------------------------------------------- worker side
# The worker's one open env, by (suite, task, image size, render quality). Jobs arrive task by task, so one is
# enough, and holding every task's env (renderer, GL context) would grow a worker by ~200 MB per
# task of a suite.
_ENV: dict[tuple[str, str, tuple[int, int], str], Any] = {}


def _worker_env(key: tuple[str, str, tuple[int, int], str]) -> Any:
    from sim.catalog import make

    if key not in _ENV:
        _close_worker_env()
        suite, task, image_size, render_quality = key
        quality = {} if render_quality == "protocol" else {"render_quality": render_quality}
        _ENV[key] = make(suite, task, image_size=image_size, **quality)
        # closed at exit before MuJoCo's own atexit hook (registered with the first GL context)
        # terminates the EGL display: atexit runs the latest registration first, and
        # unregistering first keeps a single registration. Left to the garbage collector, the
        # renderer's finalizer fails with an EGL_NOT_INITIALIZED traceback.
        atexit.unregister(_close_worker_env)
        atexit.register(_close_worker_env)
    return _ENV[key]


def _close_worker_env() -> None:
    for env in _ENV.values():
        env.close()
    _ENV.clear()


def run_expert_episode(job: EpisodeJob) -> ExpertEpisode:
    """Roll out the scripted expert once and record frames, actions and reasoning labels."""
    from sim.expert import ExpertStep, rollout
    from sim.labels import EpisodeLabeler, label_source_of

    env = _worker_env((job.suite, job.task, job.image_size, job.render_quality))
    labeler = EpisodeLabeler(label_source_of(env))
    frames: dict[str, list[Any]] = collections.defaultdict(list)

    def record(observation: dict[str, Any], step: ExpertStep) -> None:
        labeler.record(step.action, step.subtask_index)
        for key_name in (*map(image_key, DEFAULT_CAMERAS), STATE_KEY):
            frames[key_name].append(observation[key_name])
        frames[ACTION_KEY].append(step.action)

    success = rollout(env, job.seed, scene_seed=job.seed, before_step=record)
    length = len(frames[ACTION_KEY])
    if not success:
        return ExpertEpisode(job.task, job.seed, False, length)
    columns = {key_name: np.stack(values) for key_name, values in frames.items()}
    columns.update(labeler.columns())
    return ExpertEpisode(job.task, job.seed, True, length, columns)


def _worker_init(parent: ParentWatch) -> None:
    # A pool worker waits on a queue whose pipe its own copy keeps open, so it would never see
    # a killed parent go: it watches the parent instead.
    parent.start()
    os.environ.setdefault("MUJOCO_GL", "egl")


# ---------------------------------------------------------------------- parent side
class GenerationLedger:
    """`meta/generation.json`: the run's config, and task/seed of every committed episode."""

    def __init__(self, root: Path, config: GenerationConfig, committed_episodes: int) -> None:
        self.path = root / GENERATION_PATH
        self.config = config
        self.episodes: list[dict[str, Any]] = []
        self.failures: dict[str, list[int]] = {}
        if self.path.exists():
            payload = json.loads(self.path.read_text())
            recorded = payload.get("config", {})
            mine = _config_json(config)
            differing = sorted(
                key
                for key in mine
                if key != "episodes_per_task"
                and recorded.get(key, _SETTINGS_BEFORE_RECORDED.get(key)) != mine[key]
            )
            if differing:
                raise ValueError(
                    f"{root} was generated with other settings ({', '.join(f'{k}: {recorded.get(k)!r} vs {mine[k]!r}' for k in differing)}); "
                    f"use the same settings to resume, or a new --out directory"
                )
            self.episodes = payload["episodes"][:committed_episodes]
            self.failures = payload.get("failures", {})
        elif committed_episodes:
            raise ValueError(
                f"{root} holds {committed_episodes} episodes but no {GENERATION_PATH}: not a generated dataset"
            )

    def successes(self, task: str) -> list[int]:
        return [entry["seed"] for entry in self.episodes if entry["task"] == task]

    def next_seed(self, task: str, first_seed: int) -> int:
        """Seeds are tried in order, so the next one follows the last recorded attempt."""
        tried = self.successes(task) + self.failures.get(task, [])
        return max(tried, default=first_seed - 1) + 1

    def record_failure(self, task: str, seed: int) -> None:
        self.failures.setdefault(task, [])
        if seed not in self.failures[task]:
            self.failures[task].append(seed)

    def record_before_commit(self, task: str, seed: int, episode_index: int) -> None:
        self.episodes.append({"episode_index": episode_index, "task": task, "seed": seed})
        self.save()

    def save(self) -> None:
        layout.atomic_write_json(
            self.path,
            {
                "config": _config_json(self.config),
                "episodes": self.episodes,
                "failures": self.failures,
            },
        )


def _config_json(config: GenerationConfig) -> dict[str, Any]:
    payload = asdict(config)
    payload["image_size"] = list(config.image_size)
    payload["tasks"] = list(config.tasks)
    payload["scene_layout"] = scene_layout_fingerprint(config.suite)
    return payload


def scene_layout_fingerprint(suite: str) -> str | None:
    """A short hash of how a suite's training scenes are drawn: our suites' task specs (objects,
    regions, ranges, turns), or a LIBERO suite's BDDL files (its placement regions).

    Why: the same seeds give other scenes once a task's layout changes, so resuming a dataset
    generated before the change would mix two scene distributions without any error.
    None for a suite that is neither."""
    from sim.suites import SUITE_TASKS

    if suite in SUITE_TASKS:
        return hashlib.sha256(repr(SUITE_TASKS[suite]).encode()).hexdigest()[:12]
    from sim.libero_env import SUITE_MAX_EPISODE_STEPS, libero_bddl_texts

    if suite in SUITE_MAX_EPISODE_STEPS:
        return hashlib.sha256("\n".join(libero_bddl_texts(suite)).encode()).hexdigest()[:12]
    return None


def _check_render_quality(config: GenerationConfig) -> None:
    from sim.libero_env import RENDER_QUALITIES, SUITE_MAX_EPISODE_STEPS

    if config.render_quality not in RENDER_QUALITIES:
        raise ValueError(
            f"render_quality must be one of {RENDER_QUALITIES}, got {config.render_quality!r}"
        )
    if config.render_quality != "protocol" and config.suite not in SUITE_MAX_EPISODE_STEPS:
        raise ValueError(
            f"render_quality {config.render_quality!r} is a LIBERO setting; suite "
            f"{config.suite!r} has one way to draw (use 'protocol')"
        )


def generate_dataset(
    config: GenerationConfig, out: str | Path, workers: int = 1, progress: bool = True
) -> GenerationSummary:
    """Write `episodes_per_task` successful expert episodes of every task to `out` (resumable)."""
    from sim.catalog import get_suite

    spec = get_suite(config.suite)
    tasks = [spec.resolve(task) for task in config.tasks] or list(spec.tasks)
    if config.episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {config.episodes_per_task}")
    _check_render_quality(config)
    root = Path(out)
    features = default_features(image_size=config.image_size, video=config.video)
    writer = LeRobotDatasetWriter(root, features=features, fps=FPS, robot_type="panda")
    ledger = GenerationLedger(root, config, writer.num_episodes)
    first_seed = config.seed * SEED_STRIDE
    summary = GenerationSummary(0, 0, {}, {}, skipped_existing=writer.num_episodes)

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("episodes"),
        TextColumn("failed {task.fields[failed]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    context = multiprocessing.get_context("spawn")  # each worker gets its own EGL context
    with (
        Progress(*columns, disable=not progress) as bar,
        ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_worker_init,
            initargs=(ParentWatch.here(context.get_start_method()),),
        ) as pool,
    ):
        total = len(tasks) * config.episodes_per_task
        done_before = sum(
            min(len(ledger.successes(task)), config.episodes_per_task) for task in tasks
        )
        bar_task = bar.add_task(config.suite, total=total, completed=done_before, failed=0)
        for task in tasks:
            bar.update(bar_task, description=task[:48])
            _generate_task(
                task, config, pool, workers, writer, ledger, first_seed, summary, bar, bar_task
            )
    writer.finalize()
    return summary


def _generate_task(
    task: str,
    config: GenerationConfig,
    pool: ProcessPoolExecutor,
    workers: int,
    writer: LeRobotDatasetWriter,
    ledger: GenerationLedger,
    first_seed: int,
    summary: GenerationSummary,
    bar: Progress,
    bar_task: TaskID,
) -> None:
    """Keep up to 2 x workers episodes of one task in flight; commit results in seed order."""
    needed = config.episodes_per_task - len(ledger.successes(task))
    seed = ledger.next_seed(task, first_seed)
    max_attempts = config.max_attempts_factor * config.episodes_per_task + 10
    attempts = len(ledger.successes(task)) + len(ledger.failures.get(task, []))
    pending: collections.deque[Future] = collections.deque()
    while needed > 0:
        while len(pending) < 2 * workers and attempts + len(pending) < max_attempts:
            pending.append(
                pool.submit(
                    run_expert_episode,
                    EpisodeJob(config.suite, task, seed, config.image_size, config.render_quality),
                )
            )
            seed += 1
        if not pending:
            raise RuntimeError(
                f"the expert failed {len(ledger.failures.get(task, []))} of {attempts} attempts at {task!r}; "
                f"giving up before reaching {config.episodes_per_task} episodes"
            )
        result: ExpertEpisode = pending.popleft().result()
        attempts += 1
        summary.attempts[task] = summary.attempts.get(task, 0) + 1
        if not result.success:
            ledger.record_failure(task, result.seed)
            summary.failures[task] = summary.failures.get(task, 0) + 1
            bar.update(bar_task, failed=sum(summary.failures.values()))
            continue
        ledger.record_before_commit(task, result.seed, writer.num_episodes)
        writer.add_episode(result.columns, task=task)
        summary.episodes += 1
        summary.frames += result.length
        needed -= 1
        bar.advance(bar_task)
    for future in pending:
        future.cancel()
    ledger.save()


def summary_lines(summary: GenerationSummary) -> Sequence[str]:
    lines = [
        f"wrote {summary.episodes} episodes ({summary.frames} frames); {summary.skipped_existing} were already there"
    ]
    for task, attempts in summary.attempts.items():
        failed = summary.failures.get(task, 0)
        lines.append(f"  {task}: {attempts - failed}/{attempts} expert rollouts succeeded")
    return lines
