"""The one-shot GPU check (scripts/gpu_check.sh) runs on the CPU with --cpu-smoke, so the script
that must work first time in a rare GPU window cannot rot unnoticed between windows."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_smoke_run_writes_every_stage_with_finite_numbers(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--cpu-smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    stages = results["stages"]
    assert results["mode"] == "cpu-smoke"
    assert list(stages) == ["environment", "gpu_tests", "latency_tiny", "train_step_tiny", "ddp"]
    failed = {name: entry.get("error") for name, entry in stages.items() if entry["status"] != "ok"}
    assert not failed and done.returncode == 0, (failed, done.stderr[-3000:])
    # the gpu tests are collected and skipped with their reason on a CPU
    assert stages["gpu_tests"]["result"]["exit_code"] == 0
    assert "skipped" in stages["gpu_tests"]["result"]["summary"]
    latency = stages["latency_tiny"]["result"]
    for batch in ("batch_1", "batch_8"):
        row = latency[batch]
        timings = {key: value for key, value in row.items() if key.endswith("_ms")}
        assert all(math.isfinite(value) and value > 0 for value in timings.values()), row
        assert {"static_ms", "compile_ms", "kv_cache_ms"} <= set(timings)
        # fp32 on the CPU: the fast paths compute eager's chunk up to reassociation
        assert row["static_max_abs_diff_vs_eager"] < 1e-4, row
        assert row["compile_max_abs_diff_vs_eager"] < 1e-4, row
    step = stages["train_step_tiny"]["result"]
    assert step["samples_per_s"] > 0 and step["mfu"] is None  # no peak known for a CPU
    assert "skipped" in stages["ddp"]["result"]
