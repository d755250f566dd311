"""`vla-data info` on datasets the tests write: the summary it prints is the dataset's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import set_image_bytes


def vla_data(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "vla-data"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "data.cli"]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


def test_info_prints_a_correct_summary(write_dataset) -> None:
    root, episodes = write_dataset(lengths=(7, 5, 9))
    result = vla_data("info", str(root))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "LeRobotDataset v3.0, 20 fps" in out
    assert re.search(r"episodes: 3\s+frames: 21\s+duration: 1\.1 s\s+tasks: 2", out)
    assert "episode length: min 5  mean 7.0  max 9" in out
    assert re.search(r"0\s+│\s+task 0\s+│\s+2", out) and re.search(r"1\s+│\s+task 1\s+│\s+1", out)
    for key in ("observation.images.agentview", "observation.state", "reasoning.gripper_px"):
        assert key in out
    assert re.search(r"observation\.state\s+│\s+float32\s+│\s+\(8,\)", out)
    assert "valid (first image of every episode and every video decoded" in out
    actions = np.concatenate([np.stack(episode["action"]) for episode in episodes]).astype(
        np.float64
    )
    gripper_row = next(line for line in out.splitlines() if "│ gripper " in line)
    cells = [cell.strip() for cell in gripper_row.split("│")[3:10]]
    expected = [
        actions[:, 6].mean(),
        actions[:, 6].std(),
        actions[:, 6].min(),
        actions[:, 6].max(),
        *np.quantile(actions[:, 6], [0.01, 0.5, 0.99]),
    ]
    assert cells == [f"{value:.4g}" for value in expected]
    # cameras: per channel in [0, 1], from every written frame
    pixels = np.concatenate([np.stack(e["observation.images.wrist"]) for e in episodes])
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if re.search(r"images\.wrist\s+│\s+r\s", line))
    blue = [cell.strip() for cell in lines[first + 2].split("│")]
    assert blue[2] == "b" and blue[3] == f"{pixels[..., 2].mean() / 255:.4g}"


def test_info_on_a_broken_dataset_names_the_file(write_dataset) -> None:
    root, _ = write_dataset(lengths=(4,))
    (root / "data/chunk-000/file-000.parquet").write_bytes(b"not parquet")
    result = vla_data("info", str(root))
    assert result.returncode == 1
    assert "invalid dataset" in result.stdout
    assert "file-000.parquet" in result.stdout.replace("\n", "")


def test_info_full_finds_a_bad_frame_the_quick_check_skips(write_dataset) -> None:
    root, _ = write_dataset(lengths=(4, 8))
    set_image_bytes(root, "observation.images.agentview", 4 + 5, b"\x89PNG garbage")
    quick = vla_data("info", str(root))
    assert quick.returncode == 0, quick.stdout + quick.stderr  # frame 0 of each episode is fine
    assert "--full decodes every frame" in quick.stdout
    full = vla_data("info", str(root), "--full")
    assert full.returncode == 1, full.stdout + full.stderr
    message = full.stdout.replace("\n", "")
    assert "invalid dataset" in message and "file-000.parquet" in message
    assert "cannot decode 'observation.images.agentview' of episode 1 frame 5" in message
    root, _ = write_dataset(lengths=(4, 8), name="clean")
    clean = vla_data("info", str(root), "--full")
    assert clean.returncode == 0 and "valid (every frame of every camera decoded)" in clean.stdout


@pytest.mark.parametrize("args", [("info",), ("nonsense",), ("info", "x", "--full", "--no-decode")])
def test_bad_usage_exits_with_usage_error(args: tuple[str, ...]) -> None:
    result = vla_data(*args)
    assert result.returncode == 2 and "usage: vla-data" in result.stderr


def test_import_libero_then_info(tmp_path: Path) -> None:
    source = tmp_path / "KITCHEN_SCENE1_put_the_bowl_on_the_plate_demo.hdf5"
    assert (
        vla_data("synthetic-libero", str(source), "--demos", "3", "--length", "8").returncode == 0
    )
    imported = vla_data("import-libero", str(source), "--out", str(tmp_path / "ds"))
    assert imported.returncode == 0, imported.stdout + imported.stderr
    out = vla_data("info", str(tmp_path / "ds")).stdout
    assert re.search(r"episodes: 3\s+frames: 24", out)
    assert "put the bowl on the plate" in out


def test_import_libero_bad_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad_demo.hdf5"
    bad.write_bytes(b"this is not hdf5")
    result = vla_data("import-libero", str(bad), "--out", str(tmp_path / "ds"))
    assert result.returncode == 2
    assert "bad_demo.hdf5" in result.stdout and "Traceback" not in result.stdout + result.stderr
