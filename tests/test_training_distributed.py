"""Fault tolerance and multi-process training, through the real `train.py`:
a run killed with SIGKILL and resumed ends at the same parameters as an uninterrupted run, and a
2-process DDP run (gloo, CPU) keeps its replicas identical with the configured effective batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vla.training.config import load_config

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def common(root: Path, output: Path, name: str) -> list[str]:
    return [
        f"data.path={root}",
        f"output_dir={output}",
        f"name={name}",
        "data.batch_size=8",
        "data.num_workers=0",
        "logging.wandb=disabled",
        "trainer.ema_decay=0.9",
        "trainer.log_every=5",
        "optim.warmup_steps=5",
        "model.overrides.num_inference_steps=2",
    ]


def run_train_py(overrides: list[str], log: Path | None = None) -> subprocess.Popen:
    """`train.py` in a child process; its output goes to `log` (a file nobody has to drain
    while the test polls) or to a pipe read with `communicate`."""
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *overrides],
        cwd=REPO,
        stdout=open(log, "w") if log else subprocess.PIPE,  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "VLA_RICH_PROGRESS": "0"},
    )


def test_sigkill_then_resume_matches_an_uninterrupted_run(write_dataset, tmp_path: Path) -> None:
    root, _ = write_dataset(lengths=(30, 30, 30, 30))  # 120 frames: 15 batches of 8 per epoch
    settings = ["trainer.max_steps=60", "trainer.checkpoint_every=15"]
    straight = load_config(None, [*common(root, tmp_path, "straight"), *settings])
    uninterrupted = run_train_py([*common(root, tmp_path, "straight"), *settings])
    output = uninterrupted.communicate(timeout=900)[0]  # drain the pipe while waiting
    assert uninterrupted.returncode == 0, output[-3000:]

    killed = load_config(None, [*common(root, tmp_path, "killed"), *settings])
    log = tmp_path / "killed.log"
    process = run_train_py([*common(root, tmp_path, "killed"), *settings], log=log)
    marker = killed.run_dir / "checkpoints" / "step=30.ckpt"
    last = killed.run_dir / "checkpoints" / "last.ckpt"

    def resumable_from_step_30() -> bool:  # last.ckpt is written right after step=30.ckpt
        return (
            marker.exists()
            and last.exists()
            and last.stat().st_mtime_ns >= marker.stat().st_mtime_ns
        )

    deadline = time.monotonic() + 600
    while not resumable_from_step_30() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert marker.exists(), log.read_text()[-3000:]
    interrupted_at = torch.load(
        killed.run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )["global_step"]
    assert 30 <= interrupted_at < 60, (
        f"the kill should land mid-run, last checkpoint at step {interrupted_at}"
    )
    assert not (killed.run_dir / "export").exists()

    resumed_run = run_train_py([*common(root, tmp_path, "killed"), *settings, "--resume"])
    output = resumed_run.communicate(timeout=900)[0]
    assert resumed_run.returncode == 0, output[-3000:]
    expected = load_file(straight.run_dir / "export" / "model.safetensors")
    resumed = load_file(killed.run_dir / "export" / "model.safetensors")
    assert expected.keys() == resumed.keys()
    worst = max((expected[key] - resumed[key]).abs().max().item() for key in expected)
    assert worst <= 1e-5, f"resumed parameters differ from the uninterrupted run by up to {worst}"


def test_two_process_ddp_keeps_replicas_identical(write_dataset, tmp_path: Path) -> None:
    root, _ = write_dataset(lengths=(30, 30, 30, 30))
    overrides = [
        *common(root, tmp_path, "ddp"),
        "data.batch_size=4",
        "trainer.max_steps=15",
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "trainer.checkpoint_every=15",
    ]
    process = run_train_py(overrides)
    output = process.communicate(timeout=900)[0]
    (tmp_path / "ddp_output.log").write_text(output + f"\nreturncode {process.returncode}")
    assert process.returncode == 0, output[-3000:]
    info = json.loads((tmp_path / "ddp" / "run_info.json").read_text())
    assert (
        info["world_size"] == 2 and info["effective_batch_size"] == 8 and info["global_step"] == 15
    )
    # 120 frames at an effective batch of 8: exactly one epoch in 15 steps (a single process
    # with batch 4 would need 30)
    assert info["epochs_completed"] == 1
    first, second = info["replica_checksums"]
    assert first == second, f"replicas diverged: {info['replica_checksums']}"
