"""`EnvRunner.run(policy, new_chunker) -> EvalMetrics`: closed-loop rollouts in K parallel envs.

The runner owns the rollout protocol, so eval.py, the training callback and tests all measure
success the same way:

- episodes are (task, fixed init state) pairs, init states 0..N-1 of every task (ours and
  LIBERO's), run with the suite's maximum episode length and settle steps (the envs apply both);
- K `SuiteEnv` workers in separate processes take episodes from one queue; every env that needs a
  new chunk in a control step is served by one batched `policy.infer` call per kind of call;
- how chunks become actions (receding horizon, temporal ensembling, reasoning reuse) is the
  chunker's business: one `vla.robot.chunker.ActionChunker` per running episode, built by the
  `new_chunker` the caller passes (the same class `VLAPolicy.select_action` uses);
- a crashed env worker is replaced and its episode restarted from its init state; every crash is
  counted, and an episode that keeps crashing is reported as an error, never dropped.

The runner imports neither the model nor `vla`: a policy is anything with `infer(observations,
think=False, reasoning=None)` returning {"actions": (B, H, 7), "reasoning", "timing"}, like
`vla.policy.VLAPolicy` (the baselines in sim/baselines.py are others).
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from data.schema import ACTION_DIM, DEFAULT_CAMERA_RESOLUTION
from sim.catalog import get_suite
from sim.metrics import EvalMetrics, RolloutResult
from sim.suite_env import AGENTVIEW_KEY, SuiteEnv, build_suite_env
from sim.vector import EnvCommand, EnvResult, SubprocVectorEnv


class RolloutPolicy(Protocol):
    def infer(
        self,
        observations: Sequence[Mapping[str, Any]],
        *,
        think: bool = False,
        reasoning: Sequence[str] | None = None,
    ) -> Mapping[str, Any]: ...


class Chunker(Protocol):
    """One episode's chunk → action stream (`vla.robot.chunker.ActionChunker` is the one)."""

    reasoning: str | None
    config: Any  # its settings, with to_dict() (what report.json records)

    def next_call(self) -> str | None: ...

    def add(self, chunk: np.ndarray, reasoning: str | None = None) -> None: ...

    def pop_actions(self) -> np.ndarray: ...


# ------------------------------------------------------------------ typed worker commands
@dataclass(frozen=True)
class ExecuteActions:
    """Execute actions (n, 7) in order in the worker's env (one round trip per chunk)."""

    actions: np.ndarray
    film: bool

    def __call__(self, env: SuiteEnv) -> dict[str, Any]:
        return env.step_many(self.actions, film=self.film)


@dataclass(frozen=True)
class FollowExpert:
    """Let the worker's oracle expert act until the episode ends (no round trip per step)."""

    film: bool

    def __call__(self, env: SuiteEnv) -> dict[str, Any]:
        return env.follow_expert(film=self.film)


@dataclass
class _Job:
    task_index: int
    task: str
    init_state: int
    attempts: int = 0  # crashes so far


@dataclass
class _Episode:
    """One env's running episode: its observation, its chunker, and what it films."""

    job: _Job
    observation: dict[str, Any]
    record_video: bool
    chunker: Chunker | None = None  # None when the expert acts inside the worker
    steps: int = 0
    frames: list[np.ndarray] = field(default_factory=list)
    thoughts: list[str | None] = field(default_factory=list)

    @property
    def reasoning(self) -> str | None:
        return self.chunker.reasoning if self.chunker is not None else None


# The next command for every running env: what distinguishes a policy's run from the expert's.
NextCommands = Callable[[dict[int, _Episode]], dict[int, EnvCommand]]


class EnvRunner:
    """Evaluates policies on a suite; keeps its worker processes between `run` calls (periodic
    evaluation during training pays the start-up once). Use as a context manager or `close()`."""

    def __init__(
        self,
        suite: str,
        *,
        tasks: Sequence[str | int] | None = None,
        episodes_per_task: int = 50,
        scenes: str = "eval",
        num_envs: int = 2,
        image_size: tuple[int, int] = DEFAULT_CAMERA_RESOLUTION,
        oracle_expert: bool = False,
        render_images: bool = True,
        video_episodes_per_task: int = 0,
        max_retries: int = 2,
        step_timeout: float | None = 120.0,
        progress: bool = True,
    ) -> None:
        spec = get_suite(suite)
        self.suite = suite
        self.tasks = list(spec.tasks) if tasks is None else [spec.resolve(task) for task in tasks]
        # each task's index in the suite (what --list-tasks prints), not in this selection
        self.task_indices = [spec.index(task) for task in self.tasks]
        self.task_families = spec.family_by_task(self.task_indices)  # {} for ungrouped suites
        if episodes_per_task < 1:
            raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.episodes_per_task = episodes_per_task
        # "eval": the tasks' fixed evaluation init states; "train": training scenes 0..N-1 (the
        # seeds `vla-data generate` records demonstrations from), to tell fitting from
        # generalization.
        if scenes not in ("eval", "train"):
            raise ValueError(f"scenes must be 'eval' or 'train', got {scenes!r}")
        self.scenes = scenes
        self.num_envs = min(num_envs, len(self.tasks) * episodes_per_task)
        self.image_size = tuple(image_size)
        self.oracle_expert = oracle_expert
        if not render_images and (not oracle_expert or video_episodes_per_task):
            raise ValueError("render_images=False only suits the oracle expert without videos")
        self.render_images = render_images
        self.video_episodes_per_task = video_episodes_per_task
        self.max_retries = max_retries
        self.step_timeout = step_timeout
        self.progress = progress
        self._vector_env: SubprocVectorEnv | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def vector_env(self) -> SubprocVectorEnv:
        if self._vector_env is None:
            build = functools.partial(
                build_suite_env,
                self.suite,
                self.image_size,
                self.oracle_expert,
                self.render_images,
            )
            self._vector_env = SubprocVectorEnv(
                [functools.partial(build, index) for index in range(self.num_envs)],
                step_timeout=self.step_timeout,
            )
        return self._vector_env

    def close(self) -> None:
        if self._vector_env is not None:
            self._vector_env.close()
            self._vector_env = None

    def __enter__(self) -> EnvRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ evaluation
    def run(
        self,
        policy: RolloutPolicy,
        new_chunker: Callable[[], Chunker],
        video_dir: str | Path | None = None,
    ) -> EvalMetrics:
        """Run every (task, init state) episode once with `policy` and measure success, lengths
        and latency. `new_chunker()` makes each episode's chunker; `video_dir` is where the
        filmed episodes go (periodic evaluation films each run into its own directory)."""
        calls: list[dict[str, float]] = []

        def next_commands(running: dict[int, _Episode]) -> dict[int, EnvCommand]:
            _predict(policy, [episode for episode in running.values()], calls)
            # Every env executes all its due actions in one request (the envs run in parallel
            # and render only the observation the policy will look at).
            return {
                index: ExecuteActions(episode.chunker.pop_actions(), episode.record_video)
                for index, episode in running.items()
            }

        settings = new_chunker().config.to_dict()
        return self._evaluate(next_commands, new_chunker, settings, calls, video_dir)

    def run_expert(self, video_dir: str | Path | None = None) -> EvalMetrics:
        """The scripted expert on the same episodes, acting inside each worker until its episode
        ends: the success ceiling, without a round trip per step."""
        if not self.oracle_expert:
            raise ValueError("run_expert needs an EnvRunner built with oracle_expert=True")

        def next_commands(running: dict[int, _Episode]) -> dict[int, EnvCommand]:
            return {index: FollowExpert(episode.record_video) for index, episode in running.items()}

        settings = {"policy": "scripted expert, one action per step, inside the env workers"}
        return self._evaluate(next_commands, None, settings, [], video_dir)

    def _evaluate(
        self,
        next_commands: NextCommands,
        new_chunker: Callable[[], Chunker] | None,
        settings: dict[str, Any],
        calls: list[dict[str, float]],
        video_dir: str | Path | None,
    ) -> EvalMetrics:
        """The scheduling loop: keep every env busy with the next queued episode, send each its
        next command, restart crashed episodes, and collect the results."""
        if self.video_episodes_per_task and video_dir is None:
            raise ValueError("filming episodes (video_episodes_per_task > 0) needs a video_dir")
        schedule = _Schedule(self, new_chunker, Path(video_dir) if video_dir else None)
        vector_env = self.vector_env
        crashes_before = vector_env.crash_count
        env_steps, env_seconds = 0, 0.0
        started = time.perf_counter()
        try:
            schedule.start(list(range(self.num_envs)), {})
            while schedule.running:
                commands = next_commands(schedule.running)
                step_started = time.perf_counter()
                replies = vector_env.run_each(commands)
                env_seconds += time.perf_counter() - step_started
                env_steps += schedule.receive(replies)
        finally:
            schedule.bar.close()
        results = sorted(schedule.results, key=lambda r: (r.task_index, r.init_state))
        return EvalMetrics(
            suite=self.suite,
            settings=settings,
            episodes=results,
            policy_calls=calls,
            env_steps=env_steps,
            env_seconds=env_seconds,
            wall_seconds=time.perf_counter() - started,
            num_envs=self.num_envs,
            crashes=vector_env.crash_count - crashes_before,
            extra={"scenes": self.scenes},
            task_families=dict(self.task_families),
        )


class _Schedule:
    """One evaluation's bookkeeping: queued jobs, running episodes, results and progress."""

    def __init__(
        self,
        runner: EnvRunner,
        new_chunker: Callable[[], Chunker] | None,
        video_dir: Path | None,
    ) -> None:
        self.runner = runner
        self.new_chunker = new_chunker
        self.video_dir = video_dir
        self.jobs = collections.deque(
            _Job(task_index, task, init_state)
            for task_index, task in zip(runner.task_indices, runner.tasks, strict=True)
            for init_state in range(runner.episodes_per_task)
        )
        self.running: dict[int, _Episode] = {}
        self.results: list[RolloutResult] = []
        self.bar = tqdm(
            total=len(self.jobs),
            desc=f"eval {runner.suite}",
            unit="episode",
            disable=not runner.progress,
        )

    def start(self, indices: list[int], restarts: dict[int, _Job]) -> None:
        """Reset the given envs onto their restarted job or the next queued one."""
        pending = {i: restarts.get(i) or self._next_job() for i in indices}
        pending = {i: job for i, job in pending.items() if job is not None}
        train_scenes = self.runner.scenes == "train"
        while pending:
            order = list(pending)
            replies = self.runner.vector_env.reset(
                order,
                # training scenes are chosen by seed, evaluation init states by index
                seeds=[pending[i].init_state if train_scenes else None for i in order],
                options=[
                    {"task": pending[i].task}
                    if train_scenes
                    else {"task": pending[i].task, "init_state": pending[i].init_state}
                    for i in order
                ],
            )
            retry: dict[int, _Job] = {}
            for index, reply in zip(order, replies, strict=True):
                job = pending[index]
                if reply.crashed:
                    job.attempts += 1
                    if job.attempts > self.runner.max_retries:
                        self._finish(_Episode(job, {}, False), False, reply.error)
                        job = self._next_job()
                    if job is not None:
                        retry[index] = job
                    continue
                record = job.init_state < self.runner.video_episodes_per_task
                chunker = self.new_chunker() if self.new_chunker is not None else None
                self.running[index] = _Episode(job, reply.obs, record, chunker)
            pending = retry

    def receive(self, replies: Mapping[int, Any]) -> int:
        """Take every env's reply to its command; returns the env steps they executed."""
        executed = 0
        done: list[int] = []
        restarts: dict[int, _Job] = {}
        for index, reply in replies.items():
            episode = self.running[index]
            if isinstance(reply, EnvResult):  # the worker crashed and was replaced
                episode.job.attempts += 1
                del self.running[index]
                done.append(index)
                if episode.job.attempts > self.runner.max_retries:
                    self._finish(episode, False, reply.error)
                else:
                    restarts[index] = episode.job
                continue
            if episode.record_video:
                episode.frames += [episode.observation[AGENTVIEW_KEY], *reply["frames"]]
                episode.thoughts += [episode.reasoning] * reply["steps"]
            executed += reply["steps"]
            episode.steps += reply["steps"]
            episode.observation = reply["observation"]
            if reply["terminated"] or reply["truncated"]:
                del self.running[index]
                done.append(index)
                self._finish(episode, bool(reply["info"].get("success", False)))
        if done:
            self.start(done, restarts)
        return executed

    def _next_job(self) -> _Job | None:
        return self.jobs.popleft() if self.jobs else None

    def _finish(self, episode: _Episode, success: bool, error: str | None = None) -> None:
        result = RolloutResult(
            task=episode.job.task,
            task_index=episode.job.task_index,
            init_state=episode.job.init_state,
            success=success,
            steps=episode.steps,
            crashes=episode.job.attempts,
            error=error,
        )
        if episode.record_video and episode.frames and self.video_dir is not None:
            result.video = str(_write_video(self.video_dir, episode, success))
        self.results.append(result)
        self.bar.update(1)
        self.bar.set_postfix(success=f"{np.mean([r.success for r in self.results]):.0%}")


def _predict(
    policy: RolloutPolicy, episodes: list[_Episode], calls: list[dict[str, float]]
) -> None:
    """One batched `infer` per kind of call the episodes' chunkers ask for (think mode may need
    two: episodes whose chain is due for regeneration decode it, the others reuse theirs)."""
    groups: dict[str, list[_Episode]] = {}
    for episode in episodes:
        kind = episode.chunker.next_call()
        if kind is not None:
            groups.setdefault(kind, []).append(episode)
    for kind in ("act", "think", "reuse"):
        group = groups.get(kind)
        if not group:
            continue
        observations = [episode.observation for episode in group]
        reasoning = [episode.reasoning for episode in group] if kind == "reuse" else None
        out = policy.infer(observations, think=kind == "think", reasoning=reasoning)
        chunks = np.asarray(out["actions"], dtype=np.float32)  # (B, H, 7)
        if chunks.ndim != 3 or chunks.shape[0] != len(group) or chunks.shape[2] != ACTION_DIM:
            raise ValueError(
                f"policy.infer returned actions of shape {chunks.shape} for {len(group)} "
                f"observations; expected (batch, horizon, {ACTION_DIM})"
            )
        thoughts = out.get("reasoning")
        calls.append({"kind": kind, "batch": len(group), **dict(out.get("timing") or {})})
        for index, episode in enumerate(group):
            episode.chunker.add(chunks[index], thoughts[index] if thoughts else None)


def _write_video(video_dir: Path, episode: _Episode, success: bool) -> Path:
    from sim.report import write_rollout_video  # drawing and encoding only when needed

    outcome = "success" if success else "failure"
    name = f"task{episode.job.task_index:02d}_init{episode.job.init_state:02d}_{outcome}.mp4"
    return write_rollout_video(
        video_dir / name, episode.frames, episode.thoughts, task=episode.job.task
    )
