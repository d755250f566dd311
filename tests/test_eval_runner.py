"""EnvRunner: the rollout protocol measures what a direct rollout measures, and reports are sound."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.video import decode_video
from sim.baselines import ExpertPolicy, RandomPolicy
from sim.catalog import make, suite_tasks
from sim.expert import rollout
from sim.metrics import wilson_interval
from sim.report import markdown_summary, write_report
from sim.runner import EnvRunner
from vla.robot.chunker import ActionChunker, ChunkerConfig

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_wilson_interval_matches_known_values() -> None:
    # Reference values of the 95% Wilson score interval.
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def one_step_chunker() -> ActionChunker:
    """The expert's chunks hold one action: execute it, then look again."""
    return ActionChunker(ChunkerConfig(n_action_steps=1))


def expert_runner(tasks: list[str], episodes_per_task: int, num_envs: int) -> EnvRunner:
    """The scripted expert's runner, state-only (it never looks at images: fast)."""
    return EnvRunner(
        "quickstart",
        tasks=tasks,
        episodes_per_task=episodes_per_task,
        num_envs=num_envs,
        oracle_expert=True,
        render_images=False,
        progress=False,
    )


def test_expert_through_the_runner_matches_direct_rollouts() -> None:
    """The scripted expert as a policy, over 2 worker processes and 2 tasks, must succeed on
    exactly the episodes where the same expert succeeds when run directly in this process: any
    lost, reordered or misrouted action would change some trajectory."""
    tasks = list(suite_tasks("quickstart")[:2])
    with expert_runner(tasks, episodes_per_task=3, num_envs=2) as runner:
        metrics = runner.run(ExpertPolicy(), one_step_chunker)
        in_worker = runner.run_expert()
    direct = {}
    for task in tasks:
        env = make("quickstart", task, render_images=False)
        for init_state in range(3):
            direct[(task, init_state)] = rollout(env, expert_seed=init_state, init_state=init_state)
        env.close()
    measured = {(e.task, e.init_state): e.success for e in metrics.episodes}
    assert measured == direct
    # The expert run inside the workers (eval.py's ceiling) lives the same episodes, step for step.
    assert [(e.task, e.init_state, e.success, e.steps) for e in in_worker.episodes] == [
        (e.task, e.init_state, e.success, e.steps) for e in metrics.episodes
    ]
    assert not in_worker.policy_calls
    # The expert's known success on our suites is ~99.8% (docs/expert_success.md).
    assert metrics.success_rate >= 5 / 6
    assert metrics.crashes == 0 and all(e.error is None for e in metrics.episodes)
    assert all(0 < e.steps <= 200 for e in metrics.episodes)
    report = metrics.to_dict()
    assert report["overall"]["episodes"] == 6
    assert [row["task"] for row in report["tasks"]] == tasks


class FirstCallCrashes(ExpertPolicy):
    """Sends a non-finite action once: the env raises inside its worker (a crash)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def infer(self, observations, think=False, reasoning=None):  # noqa: ANN001, ANN201
        out = super().infer(observations)
        self.calls += 1
        if self.calls == 1:
            out["actions"] = np.full_like(out["actions"], np.nan)
        return out


def test_a_crashed_episode_is_restarted_and_counted() -> None:
    task = suite_tasks("quickstart")[0]
    with expert_runner([task], episodes_per_task=1, num_envs=1) as runner:
        metrics = runner.run(FirstCallCrashes(), one_step_chunker)
    env = make("quickstart", task, render_images=False)
    expected = rollout(env, expert_seed=0, init_state=0)
    env.close()
    (episode,) = metrics.episodes
    assert metrics.crashes == 1 and episode.crashes == 1
    assert episode.error is None and episode.success == expected


class AlwaysCrashes(RandomPolicy):
    def infer(self, observations, think=False, reasoning=None):  # noqa: ANN001, ANN201
        actions = np.full((len(observations), 4, 7), np.inf, np.float32)
        return {"actions": actions, "reasoning": None, "timing": {}}


def test_an_episode_that_keeps_crashing_is_reported_not_dropped() -> None:
    with EnvRunner(
        "quickstart", tasks=[0], episodes_per_task=2, num_envs=1, max_retries=0, progress=False
    ) as runner:
        metrics = runner.run(AlwaysCrashes(), ActionChunker)
    assert [e.init_state for e in metrics.episodes] == [0, 1]
    assert all(not e.success and e.error and e.crashes == 1 for e in metrics.episodes)
    assert metrics.crashes == 2
    assert metrics.to_dict()["errors"] == 2


def test_report_plot_and_video_files_are_well_formed(tmp_path) -> None:  # noqa: ANN001
    with EnvRunner(
        "quickstart",
        tasks=[1],
        episodes_per_task=1,
        num_envs=1,
        oracle_expert=True,
        video_episodes_per_task=1,
        progress=False,
    ) as runner:
        metrics = runner.run(ExpertPolicy(), one_step_chunker, video_dir=tmp_path / "videos")
    report = metrics.to_dict()
    paths = write_report(report, tmp_path, expert=report)
    (episode,) = metrics.episodes
    assert episode.success
    frames = decode_video(episode.video)
    assert frames.shape[0] == episode.steps  # one frame per executed action
    assert frames.shape[2] == 128 * 3 and frames.dtype == np.uint8
    loaded = json.loads(paths["report"].read_text())
    assert (
        loaded["overall"]["successes"] == 1 and loaded["expert"]["overall"]["success_rate"] == 1.0
    )
    assert loaded["episodes"][0]["video"] == episode.video
    with Image.open(paths["plot"]) as plot:
        assert plot.format == "PNG" and plot.size[0] > 300
    summary = paths["summary"].read_text()
    assert summary == markdown_summary(loaded)
    assert "| **overall** | 100% (1/1) |" in summary


def test_unknown_task_names_the_suite_and_the_closest_match() -> None:
    with pytest.raises(ValueError, match="did you mean"):
        EnvRunner("quickstart", tasks=["put the red cube on the plat"])
    with pytest.raises(ValueError, match="out of range"):
        EnvRunner("quickstart", tasks=[7])


def test_eval_lists_a_suites_tasks_with_the_indices_it_accepts(capsys) -> None:  # noqa: ANN001
    import eval as eval_entry

    assert eval_entry.main(["--suite", "quickstart", "--list-tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{i:3d}  {task}" for i, task in enumerate(suite_tasks("quickstart"))]
    assert eval_entry.main(["--suite", "quickstar", "--list-tasks"]) == 2
    assert "did you mean 'quickstart'" in capsys.readouterr().err


def test_eval_renders_at_the_checkpoints_camera_resolution(tmp_path) -> None:  # noqa: ANN001
    """A checkpoint trained on 96x128 cameras is rolled out at 96x128 with no --image-size: a
    square default would be refused (another aspect ratio), so success here means eval.py read
    the saved observation spec. Task 2 is reported as task 2, its index in the suite. eval.py
    runs as a user runs it, in its own process.

    The checkpoint is written in a child process too: this module already ran MuJoCo in-process,
    and Mesa's EGL (llvmpipe) and torch's triton cannot share a process (importing the model's
    stack after a render segfaults; docs/evaluation.md).
    """
    make = "import sys; from pathlib import Path; from conftest import save_tiny_checkpoint; "
    make += "print(save_tiny_checkpoint(Path(sys.argv[1]), resolution=(96, 128)))"
    made = subprocess.run(
        [sys.executable, "-c", make, str(tmp_path / "wide")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO / "tests",
    )
    assert made.returncode == 0, made.stderr[-3000:]
    checkpoint = Path(made.stdout.strip().splitlines()[-1])
    out = tmp_path / "eval"
    command = [sys.executable, str(REPO / "eval.py"), "--checkpoint", str(checkpoint)]
    command += ["--suite", "quickstart", "--tasks", "2", "--episodes-per-task", "1", "--envs", "1"]
    command += ["--videos-per-task", "0", "--no-progress", "--noise-scale", "0", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["image_size"] == [96, 128]
    (episode,) = report["episodes"]
    assert episode["task_index"] == 2 and episode["task"] == suite_tasks("quickstart")[2]
    assert episode["error"] is None and report["latency"]["act"]["calls"] > 0


def test_family_rows_pool_the_episodes_of_their_tasks() -> None:
    """The tabletop suite names a family per task; a report's family row counts exactly the
    episodes of that family's tasks, and the summary prints it."""
    from sim.catalog import get_suite
    from sim.metrics import EvalMetrics, RolloutResult

    spec = get_suite("tabletop")
    counts = {family: spec.families.count(family) for family in dict.fromkeys(spec.families)}
    assert counts == {"pick_place": 6, "stack": 3, "spatial": 3, "multi_step": 2}
    assert get_suite("libero_object").families == ()  # no grouping: no family rows
    tasks = [0, 6, 7, 13]  # pick_place, stack, stack, multi_step
    episodes = [
        RolloutResult(spec.tasks[t], t, init, success=(t == 6 or init == 0), steps=10 + t)
        for t in tasks
        for init in range(2)
    ]
    families = {spec.tasks[t]: spec.family_of(t) for t in tasks}
    metrics = EvalMetrics.from_episodes("tabletop", episodes, families)
    rows = {row["family"]: row for row in metrics.to_dict()["families"]}
    assert list(rows) == ["pick_place", "stack", "multi_step"]
    assert (rows["stack"]["tasks"], rows["stack"]["episodes"], rows["stack"]["successes"]) == (
        2,
        4,
        3,
    )
    assert (rows["pick_place"]["episodes"], rows["pick_place"]["successes"]) == (2, 1)
    assert rows["multi_step"]["mean_length"] == 23
    assert "| stack | 2 | 75% (3/4) |" in markdown_summary(metrics.to_dict())


def test_modes_table_compares_modes_on_their_common_episodes(tmp_path: Path) -> None:
    """scripts/modes_table.py --common-episodes: a mode run on fewer init states is compared
    with the others on exactly those episodes, per task and per family."""
    from sim.catalog import get_suite
    from sim.metrics import EvalMetrics, RolloutResult

    spec = get_suite("tabletop")

    def report(label: str, init_states: int, succeed: set[tuple[int, int]]) -> Path:
        episodes = [
            RolloutResult(spec.tasks[t], t, i, success=(t, i) in succeed, steps=50)
            for t in (0, 12)
            for i in range(init_states)
        ]
        families = {spec.tasks[t]: spec.family_of(t) for t in (0, 12)}
        metrics = EvalMetrics.from_episodes("tabletop", episodes, families)
        write_report(metrics.to_dict(), tmp_path / label)
        return tmp_path / label

    act = report("act", 4, {(0, 0), (0, 3), (12, 3)})  # init states 2, 3 are act's alone
    think = report("think", 2, {(0, 1), (12, 0), (12, 1)})
    script = [
        sys.executable,
        str(REPO / "scripts" / "modes_table.py"),
        f"act={act}",
        f"think={think}",
    ]
    paired = subprocess.run(
        [*script, "--common-episodes"], capture_output=True, text=True, check=True
    )
    lines = paired.stdout.splitlines()
    assert lines[2].startswith("| put the red cube in the bowl | 50% (1/2, ")
    assert lines[2].count("50% (1/2, ") == 2  # act and think, both on init states 0 and 1
    overall = next(line for line in lines if line.startswith("| **overall**"))
    assert overall.startswith("| **overall** | 25% (1/4, ") and "| 75% (3/4, " in overall
    assert any(line.startswith("| multi_step | 0% (0/2, ") for line in lines)
    unpaired = subprocess.run(script, capture_output=True, text=True, check=True).stdout
    assert "| **overall** | 38% (3/8, " in unpaired
