"""`EnvRunner.run(policy) -> EvalMetrics`: closed-loop rollouts of a policy in K parallel envs.

The runner owns the rollout protocol, so eval.py, the training callback and tests all measure
success the same way:

- episodes are (task, fixed init state) pairs, init states 0..N-1 of every task (ours and
  LIBERO's), run with the suite's maximum episode length and settle steps (the envs apply both);
- K `SuiteEnv` workers in separate processes take episodes from one queue; every env that needs a
  new chunk in a control step is served by one batched `policy.predict_chunk` call;
- receding horizon: the first `n_action_steps` actions of a chunk are executed before predicting
  again, or, with `temporal_ensemble=k`, a chunk is predicted every step and each step's action is
  the exp(-k i)-weighted average of all chunks covering it (i = 0 for the oldest);
- think mode: the chain of thought is generated on the first chunk and every `reasoning_every`
  chunks after, and fed back unchanged (reasoning reuse, no decoding) in between;
- a crashed env worker is replaced and its episode restarted from its init state; every crash is
  counted, and an episode that keeps crashing is reported as an error, never dropped.

The runner never imports the model: a policy is anything with `predict_chunk(observations,
think=False, reasoning=None)` returning (B, H, 7) chunks (and thoughts when thinking), like
`vla.policy.VLAPolicy`. An optional `last_timings` dict on the policy is collected as latency.
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from sim.registry import get_suite
from sim.suite_env import AGENTVIEW_KEY, EXPERT_ACTION_KEY, build_suite_env
from sim.vector import EnvResult, SubprocVectorEnv


class ChunkPolicy(Protocol):
    def predict_chunk(
        self,
        observations: Sequence[Mapping[str, Any]],
        think: bool = False,
        reasoning: Sequence[str] | None = None,
    ) -> Any: ...


@dataclass(frozen=True)
class RolloutSettings:
    """How a policy's chunks become actions (see the module docstring)."""

    n_action_steps: int | None = None  # None: half the chunk, as the policy API defaults
    temporal_ensemble: float | None = None
    think: bool = False
    reasoning_every: int = 1

    def __post_init__(self) -> None:
        if self.n_action_steps is not None and self.n_action_steps < 1:
            raise ValueError(f"n_action_steps must be >= 1, got {self.n_action_steps}")
        if self.reasoning_every < 1:
            raise ValueError(f"reasoning_every must be >= 1, got {self.reasoning_every}")


@dataclass
class EpisodeResult:
    task: str
    task_index: int
    init_state: int
    success: bool
    steps: int
    crashes: int = 0
    error: str | None = None  # set when the episode crashed more than max_retries times
    video: str | None = None


@dataclass
class EvalMetrics:
    """Everything one evaluation measured; `to_dict()` is what report.json holds."""

    suite: str
    settings: RolloutSettings
    episodes: list[EpisodeResult]
    policy_calls: list[dict[str, float]]  # one per predict_chunk call: batch, kind, stage times
    env_steps: int
    env_seconds: float  # time spent inside the vectorized step (all envs in parallel)
    wall_seconds: float
    num_envs: int
    crashes: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return float(np.mean([e.success for e in self.episodes])) if self.episodes else 0.0

    def per_task(self) -> list[dict[str, Any]]:
        rows = []
        for task in dict.fromkeys(e.task for e in self.episodes):
            episodes = [e for e in self.episodes if e.task == task]
            rows.append(_success_row(task, episodes))
        return rows

    def overall(self) -> dict[str, Any]:
        """Success over all episodes, and the mean of per-task rates (LIBERO reports the mean)."""
        row = _success_row("overall", self.episodes)
        tasks = self.per_task()
        row["mean_task_success"] = (
            float(np.mean([t["success_rate"] for t in tasks])) if tasks else 0.0
        )
        return row

    def latency(self) -> dict[str, dict[str, float]]:
        """Per kind of call (act / think / reuse): calls, mean batch, and mean ms per stage."""
        summary: dict[str, dict[str, float]] = {}
        for kind in dict.fromkeys(call["kind"] for call in self.policy_calls):
            calls = [c for c in self.policy_calls if c["kind"] == kind]
            row: dict[str, float] = {
                "calls": len(calls),
                "mean_batch": float(np.mean([c["batch"] for c in calls])),
            }
            for stage in ("prefix_ms", "reasoning_ms", "denoise_ms", "total_ms"):
                values = [c[stage] for c in calls if stage in c]
                if values:
                    row[stage] = float(np.mean(values))
                    if stage == "total_ms":
                        row["p90_total_ms"] = float(np.percentile(values, 90))
                        per_item = [c[stage] / c["batch"] for c in calls if stage in c]
                        row["total_ms_per_chunk"] = float(np.mean(per_item))
            reuse = [c["feature_reuse"] for c in calls if "feature_reuse" in c]
            if reuse:
                row["feature_reuse"] = float(np.mean(reuse))
            summary[kind] = row
        return summary

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "settings": asdict(self.settings),
            "overall": self.overall(),
            "tasks": self.per_task(),
            "latency": self.latency(),
            "env_steps": self.env_steps,
            "env_steps_per_second": self.env_steps / self.env_seconds if self.env_seconds else 0.0,
            "wall_seconds": self.wall_seconds,
            "num_envs": self.num_envs,
            "crashes": self.crashes,
            "errors": sum(e.error is not None for e in self.episodes),
            "episodes": [asdict(e) for e in self.episodes],
            **self.extra,
        }


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a success rate: unlike the normal approximation it stays
    inside [0, 1] and is honest at 0/n and n/n, which small evaluations hit often."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z**2 / trials
    center = (p + z**2 / (2 * trials)) / denominator
    half = z * np.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / denominator
    return max(0.0, float(center - half)), min(1.0, float(center + half))


def _success_row(name: str, episodes: Sequence[EpisodeResult]) -> dict[str, Any]:
    successes = sum(e.success for e in episodes)
    low, high = wilson_interval(successes, len(episodes))
    succeeded = [e.steps for e in episodes if e.success]
    return {
        "task": name,
        "episodes": len(episodes),
        "successes": successes,
        "success_rate": successes / len(episodes) if episodes else 0.0,
        "wilson_low": low,
        "wilson_high": high,
        "mean_length": float(np.mean([e.steps for e in episodes])) if episodes else 0.0,
        "mean_success_length": float(np.mean(succeeded)) if succeeded else None,
        "errors": sum(e.error is not None for e in episodes),
    }


@dataclass
class _Job:
    task_index: int
    task: str
    init_state: int
    attempts: int = 0  # crashes so far


@dataclass
class _Episode:
    """One env's running episode: its observation, queued actions and reasoning."""

    job: _Job
    observation: dict[str, Any]
    record_video: bool
    steps: int = 0
    queue: collections.deque = field(default_factory=collections.deque)
    ensemble: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (start step, chunk)
    chunks_predicted: int = 0
    reasoning: str | None = None
    frames: list[np.ndarray] = field(default_factory=list)
    thoughts: list[str | None] = field(default_factory=list)


class EnvRunner:
    """Evaluates policies on a suite; keeps its worker processes between `run` calls (periodic
    evaluation during training pays the start-up once). Use as a context manager or `close()`."""

    def __init__(
        self,
        suite: str,
        *,
        tasks: Sequence[str | int] | None = None,
        episodes_per_task: int = 50,
        num_envs: int = 2,
        image_size: tuple[int, int] = (128, 128),
        settings: RolloutSettings | None = None,
        video_episodes_per_task: int = 0,
        video_dir: str | Path | None = None,
        oracle_expert: bool = False,
        render_images: bool = True,
        scenes: str = "eval",
        max_retries: int = 2,
        step_timeout: float | None = 120.0,
        progress: bool = True,
    ) -> None:
        spec = get_suite(suite)
        self.suite = suite
        self.tasks = _resolve_tasks(suite, list(spec.tasks), tasks)
        if episodes_per_task < 1:
            raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.episodes_per_task = episodes_per_task
        self.num_envs = min(num_envs, len(self.tasks) * episodes_per_task)
        self.image_size = tuple(image_size)
        self.settings = settings or RolloutSettings()
        self.video_episodes_per_task = video_episodes_per_task
        self.video_dir = Path(video_dir) if video_dir is not None else None
        if video_episodes_per_task and self.video_dir is None:
            raise ValueError("video_episodes_per_task > 0 needs a video_dir to write the videos to")
        self.oracle_expert = oracle_expert
        # "eval": the tasks' fixed evaluation init states; "train": training scenes 0..N-1 (the
        # seeds `vla-data generate` records demonstrations from), to tell fitting from
        # generalization.
        if scenes not in ("eval", "train"):
            raise ValueError(f"scenes must be 'eval' or 'train', got {scenes!r}")
        self.scenes = scenes
        if not render_images and (not oracle_expert or video_episodes_per_task):
            raise ValueError("render_images=False only suits the oracle expert without videos")
        self.render_images = render_images
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
        policy: ChunkPolicy,
        settings: RolloutSettings | None = None,
        video_dir: str | Path | None = None,
    ) -> EvalMetrics:
        """Run every (task, init state) episode once and measure success, lengths and latency.

        `settings` and `video_dir` override the runner's for this run only (periodic evaluation
        films each run into its own directory).
        """
        settings = settings or self.settings
        video_dir = Path(video_dir) if video_dir is not None else self.video_dir
        vector_env = self.vector_env
        # The scripted expert needs no policy calls: each worker runs it to the episode's end.
        follow_expert = isinstance(policy, ExpertPolicy) and policy.in_worker and self.oracle_expert
        crashes_before = vector_env.crash_count
        jobs = collections.deque(
            _Job(self.tasks.index(task), task, init_state)
            for task in self.tasks
            for init_state in range(self.episodes_per_task)
        )
        results: list[EpisodeResult] = []
        calls: list[dict[str, float]] = []
        running: dict[int, _Episode] = {}
        env_steps, env_seconds = 0, 0.0
        started = time.perf_counter()
        bar = tqdm(
            total=len(jobs), desc=f"eval {self.suite}", unit="episode", disable=not self.progress
        )

        def finish(episode: _Episode, success: bool, error: str | None = None) -> None:
            result = EpisodeResult(
                task=episode.job.task,
                task_index=episode.job.task_index,
                init_state=episode.job.init_state,
                success=success,
                steps=episode.steps,
                crashes=episode.job.attempts,
                error=error,
            )
            if episode.record_video and episode.frames:
                result.video = str(self._write_video(video_dir, episode, success))
            results.append(result)
            bar.update(1)
            bar.set_postfix(success=f"{np.mean([r.success for r in results]):.0%}")

        def start(indices: list[int], restarts: dict[int, _Job]) -> None:
            """Reset the given envs onto their restarted job or the next queued one."""
            pending = {i: restarts.get(i) or (jobs.popleft() if jobs else None) for i in indices}
            pending = {i: job for i, job in pending.items() if job is not None}
            while pending:
                order = list(pending)
                replies = vector_env.reset(
                    order,
                    seeds=[
                        pending[i].init_state if self.scenes == "train" else None for i in order
                    ],
                    options=[self._reset_options(pending[i]) for i in order],
                )
                retry: dict[int, _Job] = {}
                for index, reply in zip(order, replies, strict=True):
                    job = pending[index]
                    if reply.crashed:
                        job.attempts += 1
                        if job.attempts > self.max_retries:
                            finish(_Episode(job, {}, False), False, reply.error)
                            job = jobs.popleft() if jobs else None
                        if job is not None:
                            retry[index] = job
                        continue
                    record = job.init_state < self.video_episodes_per_task
                    running[index] = _Episode(job, reply.obs, record)
                pending = retry

        try:
            start(list(range(self.num_envs)), {})
            while running:
                if follow_expert:
                    # The oracle acts inside each worker until its episode ends.
                    requests = {i: (episode.record_video,) for i, episode in running.items()}
                    step_started = time.perf_counter()
                    replies = vector_env.call_each("follow_expert", requests)
                else:
                    needing = [
                        i
                        for i, episode in running.items()
                        if not episode.queue or settings.temporal_ensemble is not None
                    ]
                    if needing:
                        self._predict(policy, settings, [running[i] for i in needing], calls)
                    # Every env executes its whole queue in one request (the envs run in
                    # parallel and render only the observation the policy will look at).
                    requests = {
                        i: (self._take_actions(episode, settings), episode.record_video)
                        for i, episode in running.items()
                    }
                    step_started = time.perf_counter()
                    replies = vector_env.call_each("step_many", requests)
                env_seconds += time.perf_counter() - step_started
                done: list[int] = []
                restarts: dict[int, _Job] = {}
                for index, reply in replies.items():
                    episode = running[index]
                    if isinstance(reply, EnvResult):  # the worker crashed and was replaced
                        episode.job.attempts += 1
                        del running[index]
                        done.append(index)
                        if episode.job.attempts > self.max_retries:
                            finish(episode, False, reply.error)
                        else:
                            restarts[index] = episode.job
                        continue
                    if episode.record_video:
                        episode.frames += [episode.observation[AGENTVIEW_KEY], *reply["frames"]]
                        episode.thoughts += [episode.reasoning] * reply["steps"]
                    env_steps += reply["steps"]
                    episode.steps += reply["steps"]
                    episode.observation = reply["observation"]
                    if reply["terminated"] or reply["truncated"]:
                        del running[index]
                        done.append(index)
                        finish(episode, bool(reply["info"].get("success", False)))
                if done:
                    start(done, restarts)
        finally:
            bar.close()
        results.sort(key=lambda r: (r.task_index, r.init_state))
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
        )

    def _reset_options(self, job: _Job) -> dict[str, Any]:
        if self.scenes == "train":
            return {"task": job.task}  # the seed selects training scene `job.init_state`
        return {"task": job.task, "init_state": job.init_state}

    # ------------------------------------------------------------------ chunks and actions
    def _predict(
        self,
        policy: ChunkPolicy,
        settings: RolloutSettings,
        episodes: list[_Episode],
        calls: list[dict[str, float]],
    ) -> None:
        """One batched predict_chunk per kind of call (think mode may need two: envs whose
        chain is due for regeneration decode it, the others reuse theirs)."""
        if not settings.think:
            groups = {"act": episodes}
        else:
            groups = {"think": [], "reuse": []}
            for episode in episodes:
                due = (
                    episode.reasoning is None
                    or episode.chunks_predicted % settings.reasoning_every == 0
                )
                groups["think" if due else "reuse"].append(episode)
        for kind, group in groups.items():
            if not group:
                continue
            observations = [episode.observation for episode in group]
            if kind == "act":
                chunks, thoughts = policy.predict_chunk(observations), None
            elif kind == "think":
                chunks, thoughts = policy.predict_chunk(observations, think=True)
            else:
                reasoning = [episode.reasoning for episode in group]
                chunks, thoughts = policy.predict_chunk(observations, reasoning=reasoning)
            chunks = np.asarray(chunks, dtype=np.float32)  # (B, H, 7)
            if chunks.ndim != 3 or chunks.shape[0] != len(group):
                raise ValueError(
                    f"predict_chunk returned shape {chunks.shape} for {len(group)} observations; "
                    "expected (batch, horizon, action_dim)"
                )
            timings = dict(getattr(policy, "last_timings", {}) or {})
            calls.append({"kind": kind, "batch": len(group), **timings})
            for index, episode in enumerate(group):
                self._receive_chunk(episode, chunks[index], settings)
                episode.chunks_predicted += 1
                if thoughts is not None:
                    episode.reasoning = thoughts[index]

    @staticmethod
    def _receive_chunk(episode: _Episode, chunk: np.ndarray, settings: RolloutSettings) -> None:
        if settings.temporal_ensemble is not None:
            episode.ensemble.append((episode.steps, chunk))
            return
        horizon = chunk.shape[0]
        n_action_steps = settings.n_action_steps or max(1, horizon // 2)
        episode.queue.extend(chunk[: min(n_action_steps, horizon)])

    @classmethod
    def _take_actions(cls, episode: _Episode, settings: RolloutSettings) -> np.ndarray:
        """The actions (n, 7) to execute before the policy looks again: the queued rest of the
        chunk, or with temporal ensembling the one ensembled action."""
        if settings.temporal_ensemble is not None:
            return cls._next_action(episode, settings)[None]
        actions = np.stack(list(episode.queue))
        episode.queue.clear()
        return actions

    @staticmethod
    def _next_action(episode: _Episode, settings: RolloutSettings) -> np.ndarray:
        if settings.temporal_ensemble is None:
            return episode.queue.popleft()
        step = episode.steps
        episode.ensemble = [
            (start, chunk) for start, chunk in episode.ensemble if step - start < chunk.shape[0]
        ]
        actions = np.stack([chunk[step - start] for start, chunk in episode.ensemble])
        weights = np.exp(-settings.temporal_ensemble * np.arange(len(actions)))  # oldest first
        return (weights[:, None] * actions).sum(0).astype(np.float32) / np.float32(weights.sum())

    @staticmethod
    def _write_video(video_dir: Path, episode: _Episode, success: bool) -> Path:
        from sim.report import write_rollout_video  # drawing and encoding only when needed

        name = f"task{episode.job.task_index:02d}_init{episode.job.init_state:02d}_{'success' if success else 'failure'}.mp4"
        return write_rollout_video(
            video_dir / name, episode.frames, episode.thoughts, task=episode.job.task
        )


class ExpertPolicy:
    """The scripted expert as a "policy": replays the privileged action each observation carries
    when the runner was built with `oracle_expert=True` (chunks of one action).

    `in_worker=True` lets each env worker run the expert to its episode's end instead: the same
    episodes without a round trip to the worker per step (eval.py's ceiling uses it). The default
    goes through the same chunk loop as a learned policy, which is what the runner's tests
    check that loop with.
    """

    def __init__(self, in_worker: bool = False) -> None:
        self.in_worker = in_worker

    def predict_chunk(
        self,
        observations: Sequence[Mapping[str, Any]],
        think: bool = False,
        reasoning: Sequence[str] | None = None,
    ) -> np.ndarray:
        if think or reasoning is not None:
            raise ValueError("the scripted expert does not reason; evaluate it in act-only mode")
        missing = [i for i, o in enumerate(observations) if EXPERT_ACTION_KEY not in o]
        if missing:
            raise KeyError(
                f"observations {missing} lack {EXPERT_ACTION_KEY!r}; build the EnvRunner with oracle_expert=True"
            )
        return np.stack([o[EXPERT_ACTION_KEY] for o in observations])[:, None]  # (B, 1, 7)


class RandomPolicy:
    """Uniform random actions in [-1, 1]: the chance level a trained policy must beat."""

    def __init__(self, horizon: int = 10, seed: int = 0) -> None:
        self.horizon = horizon
        self.rng = np.random.default_rng(seed)

    def predict_chunk(
        self,
        observations: Sequence[Mapping[str, Any]],
        think: bool = False,
        reasoning: Sequence[str] | None = None,
    ) -> np.ndarray:
        shape = (len(observations), self.horizon, 7)
        return self.rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)


def _resolve_tasks(suite: str, names: list[str], tasks: Sequence[str | int] | None) -> list[str]:
    if tasks is None:
        return names
    resolved = []
    for task in tasks:
        if isinstance(task, int) or (isinstance(task, str) and task.isdigit()):
            index = int(task)
            if not 0 <= index < len(names):
                raise ValueError(
                    f"task index {index} is out of range: suite {suite!r} has {len(names)} tasks (0..{len(names) - 1})"
                )
            resolved.append(names[index])
        elif task in names:
            resolved.append(task)
        else:
            from sim.registry import did_you_mean

            raise ValueError(
                f"suite {suite!r} has no task {task!r}{did_you_mean(task, names)}; run `eval.py --suite {suite} --list-tasks`"
            )
    return resolved
