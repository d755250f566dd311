"""What an evaluation measured: per-episode results, success rates with Wilson intervals, and
the policy's latency per kind of call. `EvalMetrics.to_dict()` is what report.json holds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class RolloutResult:
    """One evaluation episode: a (task, init state) pair rolled out once."""

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
    suite: str
    settings: dict[str, Any]  # how chunks became actions (the chunker's config)
    episodes: list[RolloutResult]
    policy_calls: list[dict[str, float]]  # one per policy call: batch, kind, stage times
    env_steps: int
    env_seconds: float  # time spent inside the vectorized step (all envs in parallel)
    wall_seconds: float
    num_envs: int
    crashes: int
    extra: dict[str, Any] = field(default_factory=dict)
    # task -> family, for suites that group their tasks (SuiteSpec.families); {} for the others
    task_families: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_episodes(
        cls,
        suite: str,
        episodes: list[RolloutResult],
        task_families: dict[str, str] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> EvalMetrics:
        """Success rows rebuilt from episodes alone (a report's "episodes", a subset of them):
        no policy calls, env steps or timings."""
        return cls(
            suite=suite,
            settings=dict(settings or {}),
            episodes=episodes,
            policy_calls=[],
            env_steps=0,
            env_seconds=0.0,
            wall_seconds=0.0,
            num_envs=0,
            crashes=0,
            task_families=dict(task_families or {}),
        )

    @property
    def success_rate(self) -> float:
        return float(np.mean([e.success for e in self.episodes])) if self.episodes else 0.0

    def per_task(self) -> list[dict[str, Any]]:
        rows = []
        for task in dict.fromkeys(e.task for e in self.episodes):
            episodes = [e for e in self.episodes if e.task == task]
            rows.append(success_row(task, episodes))
        return rows

    def per_family(self) -> list[dict[str, Any]]:
        """One success row per task family (pooled over its tasks' episodes), in the order the
        families first appear; [] when the suite has no families. The row's name is under
        "family"; "tasks" counts the tasks it pools."""
        rows = []
        for family in dict.fromkeys(self.task_families.get(e.task) for e in self.episodes):
            if family is None:
                continue
            episodes = [e for e in self.episodes if self.task_families.get(e.task) == family]
            row = success_row(family, episodes)
            row["family"] = row.pop("task")
            row["tasks"] = len({e.task for e in episodes})
            rows.append(row)
        return rows

    def overall(self) -> dict[str, Any]:
        """Success over all episodes, and the mean of per-task rates (LIBERO reports the mean)."""
        row = success_row("overall", self.episodes)
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
            "settings": dict(self.settings),
            "overall": self.overall(),
            "tasks": self.per_task(),
            "families": self.per_family(),
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


def success_row(name: str, episodes: Sequence[RolloutResult]) -> dict[str, Any]:
    """One row of the success table: counts, rate, its interval and episode lengths."""
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
