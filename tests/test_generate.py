"""`vla-data generate`: successful expert episodes only, in seed order whatever the worker count,
resumable after an interruption, and readable by the data package."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_children_end, child_pids

from data.reader import LeRobotDatasetReader
from data.reasoning import Reasoning
from sim.generate import (
    GENERATION_PATH,
    GenerationConfig,
    generate_dataset,
    scene_layout_fingerprint,
)

pytestmark = pytest.mark.slow
TASK = "put the blue cube on the plate"


def config(episodes: int) -> GenerationConfig:
    return GenerationConfig(
        suite="quickstart", episodes_per_task=episodes, image_size=(64, 64), tasks=(TASK,)
    )


def test_generation_is_ordered_resumable_and_reproducible(tmp_path: Path) -> None:
    parallel = tmp_path / "parallel"
    summary = generate_dataset(config(3), parallel, workers=2, progress=False)
    assert summary.episodes == 3

    resumed = tmp_path / "resumed"
    generate_dataset(config(1), resumed, workers=1, progress=False)  # an interrupted run...
    again = generate_dataset(config(3), resumed, workers=1, progress=False)  # ...started again
    assert again.skipped_existing == 1 and again.episodes == 2

    first, second = LeRobotDatasetReader(parallel), LeRobotDatasetReader(resumed)
    first.validate()
    second.validate()
    assert [e.length for e in first.episodes] == [e.length for e in second.episodes]
    for key, values in first.numeric_columns().items():
        np.testing.assert_array_equal(values, second.numeric_columns()[key], err_msg=key)
    for row in (0, first.num_frames // 2, first.num_frames - 1):
        np.testing.assert_array_equal(
            first.image("observation.images.agentview", row),
            second.image("observation.images.agentview", row),
        )
    ledger = json.loads((parallel / GENERATION_PATH).read_text())
    seeds = [entry["seed"] for entry in ledger["episodes"]]
    assert seeds == sorted(seeds) and len(set(seeds)) == 3

    # what was written is what the expert did, with labels that parse
    assert first.tasks == [TASK]
    frame = {
        key: first.table[key][5].as_py()
        for key in first.table.column_names
        if key.startswith("reasoning.")
    }
    frame["reasoning.gripper_px"] = np.asarray(frame["reasoning.gripper_px"], dtype=np.int16)
    reasoning = Reasoning.from_frame(frame)
    assert reasoning.plan == ("pick up the blue cube", "place it on the plate")
    assert reasoning.subtask == "pick up the blue cube"
    assert {box.name for box in reasoning.objects} == {"blue cube", "red cube", "plate"}
    assert first.stats["action"]["count"][0] == first.num_frames

    # the first thing a user looks at: the episode with its labels drawn, as a video
    from data.render import render_episode
    from data.video import decode_video

    rendered = render_episode(first, 1, tmp_path / "episode1.mp4", scale=4)
    frames = decode_video(rendered.path)
    assert frames.shape[0] == first.episodes[1].length
    assert frames.shape[1:3] == rendered.size and frames.shape[2] == 64 * 4


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    generate_dataset(config(1), tmp_path / "ds", workers=1, progress=False)
    other = GenerationConfig(
        suite="quickstart", episodes_per_task=2, image_size=(64, 64), tasks=(TASK,), seed=1
    )
    with pytest.raises(ValueError, match="seed: 0 vs 1"):
        generate_dataset(other, tmp_path / "ds", workers=1, progress=False)
    # A dataset drawn before the suite's scene layout changed: same seeds, other scenes.
    ledger = tmp_path / "ds" / GENERATION_PATH
    payload = json.loads(ledger.read_text())
    assert payload["config"]["scene_layout"] == scene_layout_fingerprint("quickstart")
    payload["config"]["scene_layout"] = "0123456789ab"
    ledger.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="scene_layout: '0123456789ab' vs"):
        generate_dataset(config(2), tmp_path / "ds", workers=1, progress=False)


def test_render_quality_is_part_of_the_settings_and_only_libero_has_a_fast_one(
    tmp_path: Path,
) -> None:
    generate_dataset(config(1), tmp_path / "ds", workers=1, progress=False)
    ledger = tmp_path / "ds" / GENERATION_PATH
    payload = json.loads(ledger.read_text())
    assert payload["config"]["render_quality"] == "protocol"
    # A dataset written before the setting was recorded was drawn at protocol quality: it
    # resumes under the default and is refused under another.
    del payload["config"]["render_quality"]
    ledger.write_text(json.dumps(payload))
    generate_dataset(config(2), tmp_path / "ds", workers=1, progress=False)
    payload = json.loads(ledger.read_text())
    payload["config"]["render_quality"] = "fast"
    ledger.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="render_quality: 'fast' vs 'protocol'"):
        generate_dataset(config(3), tmp_path / "ds", workers=1, progress=False)
    with pytest.raises(ValueError, match="'fast' is a LIBERO setting; suite 'quickstart'"):
        generate_dataset(
            replace(config(1), render_quality="fast"), tmp_path / "new", workers=1, progress=False
        )
    assert not (tmp_path / "new").exists()


def test_unknown_task_is_refused_before_any_work(tmp_path: Path) -> None:
    typo = replace(config(1), tasks=("put the blue cube on the plat",))
    with pytest.raises(KeyError, match=f"did you mean '{TASK}'.*--list-tasks"):
        generate_dataset(typo, tmp_path / "ds", workers=1, progress=False)
    assert not (tmp_path / "ds").exists()


def test_cli_generate_then_info(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    command = [
        str(Path(sys.executable).parent / "vla-data"),
        "generate",
        "--suite",
        "quickstart",
        "--episodes-per-task",
        "1",
        "--tasks",
        "0",
        "--image-size",
        "64",
        "64",
        "--workers",
        "1",
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "put the red cube on the plate: 1/1 expert rollouts succeeded" in result.stdout
    info = subprocess.run(
        [command[0], "info", str(out)], capture_output=True, text=True, timeout=120
    )
    assert info.returncode == 0 and "episodes: 1" in info.stdout
    bad = subprocess.run(
        [
            command[0],
            "generate",
            "--suite",
            "quickstrt",
            "--episodes-per-task",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "did you mean 'quickstart'" in bad.stdout
    out_of_range = subprocess.run(
        [command[0], "generate", "--suite", "quickstart", "--episodes-per-task", "1"]
        + ["--tasks", "1", "3", "--out", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out_of_range.returncode == 2, out_of_range.stdout + out_of_range.stderr
    assert "task index 3 is out of range" in out_of_range.stdout
    assert not (tmp_path / "none").exists()


def has_mujoco(pid: int) -> bool:
    """The worker has loaded MuJoCo, i.e. it is past start-up and building or rolling out a scene."""
    try:
        return "mujoco" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.timeout(300)
def test_generation_workers_exit_when_the_command_is_killed(tmp_path: Path) -> None:
    """SIGKILL of `vla-data generate` mid-run ends its pool workers (each holds a scene and a GL
    context) instead of leaving them as orphans."""
    command = [str(Path(sys.executable).parent / "vla-data"), "generate", "--suite", "quickstart"]
    command += ["--episodes-per-task", "4", "--tasks", "0", "--image-size", "64", "64"]
    command += ["--workers", "2", "--out", str(tmp_path / "ds")]
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 240
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline:
            assert parent.poll() is None, "vla-data generate ended before its workers started"
            children = child_pids(parent.pid)
            workers = [pid for pid in children if has_mujoco(pid)]
            time.sleep(0.5)
        assert len(workers) == 2, f"expected 2 workers rolling out, found {workers}"
    finally:
        parent.kill()
        parent.wait()
    assert_children_end(children, f"vla-data generate {parent.pid}")
