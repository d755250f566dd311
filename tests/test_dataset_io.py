"""Writer → reader round trips, file layout, crash safety and corruption errors."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_episode, set_image_bytes
from PIL import Image

from data import layout
from data.features import default_features
from data.reader import DatasetError, LeRobotDatasetReader
from data.stats import STAT_NAMES
from data.writer import LeRobotDatasetWriter

REPO = Path(__file__).resolve().parents[1]


def assert_dataset_equals(root: Path, episodes: list[dict]) -> None:
    """Every stored frame equals what was written, exactly (images are lossless PNG)."""
    reader = LeRobotDatasetReader(root)
    reader.validate()
    assert reader.num_episodes == len(episodes)
    numeric = reader.numeric_columns()
    for episode_record, written in zip(reader.episodes, episodes, strict=True):
        rows = slice(episode_record.from_index, episode_record.to_index)
        assert episode_record.length == len(written["action"])
        np.testing.assert_array_equal(
            numeric["observation.state"][rows], np.stack(written["observation.state"])
        )
        np.testing.assert_array_equal(numeric["action"][rows], np.stack(written["action"]))
        np.testing.assert_array_equal(
            numeric["reasoning.gripper_px"][rows], np.stack(written["reasoning.gripper_px"])
        )
        assert reader.table["reasoning.subtask"][rows].to_pylist() == written["reasoning.subtask"]
        assert reader.table["reasoning.objects"][rows].to_pylist() == written["reasoning.objects"]
        for offset in range(episode_record.length):
            for camera in ("agentview", "wrist"):
                key = f"observation.images.{camera}"
                np.testing.assert_array_equal(
                    reader.image(key, episode_record.from_index + offset), written[key][offset]
                )


def test_round_trip_is_exact(write_dataset) -> None:
    root, episodes = write_dataset(lengths=(7, 5, 9))
    assert_dataset_equals(root, episodes)
    reader = LeRobotDatasetReader(root)
    assert reader.version == "v3.0"
    assert reader.tasks == ["task 0", "task 1"]
    assert [episode.tasks for episode in reader.episodes] == [("task 0",), ("task 1",), ("task 0",)]
    assert reader.task_of_frames()[7:12] == ["task 1"] * 5
    np.testing.assert_array_equal(reader.table["frame_index"].to_numpy()[7:12], np.arange(5))
    np.testing.assert_allclose(
        reader.table["timestamp"].to_numpy()[7:12], np.arange(5) / 20, rtol=1e-6
    )


def test_layout_matches_lerobot_v3(write_dataset) -> None:
    root, _ = write_dataset(lengths=(4, 4))
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (2, 8, 2)
    assert info["features"]["observation.state"] == {
        "dtype": "float32",
        "shape": [8],
        "names": default_features()["observation.state"].names,
    }
    for name in ("frame_index", "episode_index", "index", "task_index", "timestamp"):
        assert name in info["features"]
    assert (root / "data/chunk-000/file-000.parquet").exists()
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [(row["dataset_from_index"], row["dataset_to_index"]) for row in episodes] == [
        (0, 4),
        (4, 8),
    ]
    tasks = pq.read_table(root / "meta/tasks.parquet").to_pandas() if _has_pandas() else None
    if tasks is not None:
        assert list(tasks.index) == ["task 0", "task 1"]
    stats = json.loads((root / "meta/stats.json").read_text())
    assert stats["action"]["count"] == [8]
    assert set(stats["action"]) == set(STAT_NAMES)


def _has_pandas() -> bool:
    try:
        import pandas  # noqa: F401
    except ImportError:
        return False
    return True


def test_data_files_roll_over_at_size_limit(write_dataset) -> None:
    root, episodes = write_dataset(lengths=(6, 6, 6, 6), data_file_size_mb=0.001)
    data_files = sorted((root / "data").rglob("*.parquet"))
    assert len(data_files) >= 2, "a 1 kB size limit must split the episodes over several files"
    assert_dataset_equals(root, episodes)


def test_several_episodes_share_a_data_file(write_dataset) -> None:
    root, episodes = write_dataset(lengths=(3, 4, 5))
    assert len(list((root / "data").rglob("*.parquet"))) == 1
    assert pq.read_table(root / "data/chunk-000/file-000.parquet").num_rows == 12


def test_resume_appends_after_committed_episodes(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    writer = LeRobotDatasetWriter(root, features=default_features(image_size=(16, 16)), fps=20)
    first = [
        make_episode(5, seed=0, image_size=(16, 16)),
        make_episode(6, seed=1, image_size=(16, 16)),
    ]
    for episode in first:
        writer.add_episode(episode, task="a")
    resumed = LeRobotDatasetWriter(root, features=default_features(image_size=(16, 16)), fps=20)
    assert resumed.num_episodes == 2 and resumed.num_frames == 11
    later = make_episode(4, seed=2, image_size=(16, 16))
    assert resumed.add_episode(later, task="b") == 2
    resumed.finalize()
    assert_dataset_equals(root, [*first, later])


def test_resume_rejects_other_features(write_dataset) -> None:
    root, _ = write_dataset(lengths=(3,))
    with pytest.raises(ValueError, match="other features"):
        LeRobotDatasetWriter(root, features=default_features(image_size=(64, 64)), fps=20)
    with pytest.raises(ValueError, match="20 fps"):
        LeRobotDatasetWriter(root, features=default_features(image_size=(32, 32)), fps=10)


class CrashBeforeCommit(RuntimeError):
    pass


@pytest.mark.parametrize("crash_at", ["data", "episodes", "tasks", "info"])
def test_crash_mid_episode_leaves_no_partial_episode(
    tmp_path: Path, monkeypatch, crash_at: str
) -> None:
    """A crash at any write of an episode's commit leaves the dataset as it was before it."""
    root = tmp_path / "ds"
    features = default_features(image_size=(16, 16))
    writer = LeRobotDatasetWriter(root, features=features, fps=20)
    kept = make_episode(5, seed=0, image_size=(16, 16))
    writer.add_episode(kept, task="a")

    targets = {
        "data": "data/",
        "episodes": "meta/episodes/",
        "tasks": layout.TASKS_PATH,
        "info": layout.INFO_PATH,
    }
    real_parquet, real_json = layout.atomic_write_parquet, layout.atomic_write_json

    def crashing(real):
        def write(path, payload):
            if targets[crash_at] in path.relative_to(root).as_posix():
                raise CrashBeforeCommit(path)
            return real(path, payload)

        return write

    monkeypatch.setattr(layout, "atomic_write_parquet", crashing(real_parquet))
    monkeypatch.setattr(layout, "atomic_write_json", crashing(real_json))
    with pytest.raises(CrashBeforeCommit):
        writer.add_episode(make_episode(7, seed=1, image_size=(16, 16)), task="b")
    monkeypatch.undo()

    assert_dataset_equals(root, [kept])
    resumed = LeRobotDatasetWriter(root, features=features, fps=20)
    later = make_episode(3, seed=2, image_size=(16, 16))
    resumed.add_episode(later, task="c")
    assert_dataset_equals(root, [kept, later])


def test_sigkill_during_generation_is_resumable(tmp_path: Path) -> None:
    """A writer process killed with SIGKILL at an arbitrary moment leaves a valid, resumable dataset."""
    root = tmp_path / "ds"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / "tests")!r}]
        from conftest import make_episode, set_image_bytes
        from data.features import default_features
        from data.writer import LeRobotDatasetWriter
        writer = LeRobotDatasetWriter({str(root)!r}, features=default_features(image_size=(48, 48)), fps=20)
        for seed in range(1000):
            writer.add_episode(make_episode(20, seed=seed, image_size=(48, 48)), task="t")
            print(seed, flush=True)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    for _ in range(3):  # let a few episodes commit, then kill mid-stream
        process.stdout.readline()
    time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    reader = LeRobotDatasetReader(root)
    reader.validate()
    committed = reader.num_episodes
    assert committed >= 3
    assert reader.num_frames == 20 * committed
    expected = [make_episode(20, seed=seed, image_size=(48, 48)) for seed in range(committed)]
    writer = LeRobotDatasetWriter(root, features=default_features(image_size=(48, 48)), fps=20)
    assert not list(root.rglob("*.partial")), "resuming must clear temporary files"
    expected.append(make_episode(20, seed=committed, image_size=(48, 48)))
    writer.add_episode(expected[-1], task="t")
    assert_dataset_equals(root, expected)


def test_writer_rejects_bad_frames(tmp_path: Path) -> None:
    writer = LeRobotDatasetWriter(
        tmp_path / "ds", features=default_features(image_size=(16, 16)), fps=20
    )
    episode = make_episode(4, seed=0, image_size=(16, 16))
    bad_shape = {**episode, "observation.state": [np.zeros(7, np.float32)] * 4}
    with pytest.raises(ValueError, match=r"'observation.state'.*\(8,\)"):
        writer.add_episode(bad_shape, task="t")
    with pytest.raises(ValueError, match=r"missing \['action'\]"):
        writer.add_episode(
            {key: value for key, value in episode.items() if key != "action"}, task="t"
        )
    nan_action = {**episode, "action": [np.full(7, np.nan, np.float32)] * 4}
    with pytest.raises(ValueError, match="'action'.*NaN"):
        writer.add_episode(nan_action, task="t")
    with pytest.raises(ValueError, match="task"):
        writer.add_episode(episode, task="")
    assert writer.num_episodes == 0


# ---------------------------------------------------------------------- corruption
def test_truncated_data_file_names_the_file(write_dataset) -> None:
    root, _ = write_dataset(lengths=(4, 4))
    data_file = root / "data/chunk-000/file-000.parquet"
    data_file.write_bytes(data_file.read_bytes()[:200])
    with pytest.raises(DatasetError, match=r"file-000\.parquet: unreadable parquet"):
        LeRobotDatasetReader(root).validate()


def test_missing_info_key_names_file_and_key(write_dataset) -> None:
    root, _ = write_dataset(lengths=(4,))
    info = json.loads((root / "meta/info.json").read_text())
    del info["fps"]
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"info\.json: missing key 'fps'"):
        LeRobotDatasetReader(root)


def test_invalid_json_is_reported(write_dataset) -> None:
    root, _ = write_dataset(lengths=(4,))
    (root / "meta/info.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"info\.json: not valid JSON"):
        LeRobotDatasetReader(root)


def test_unsupported_version_is_reported(write_dataset) -> None:
    root, _ = write_dataset(lengths=(4,))
    info = json.loads((root / "meta/info.json").read_text())
    info["codebase_version"] = "v1.6"
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"'v1\.6' is not supported"):
        LeRobotDatasetReader(root)


def test_declared_shape_mismatch_names_column(write_dataset) -> None:
    root, _ = write_dataset(lengths=(4,))
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["action"]["shape"] = [6]
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(
        DatasetError, match=r"file-000\.parquet: column 'action' has type .*expected lists of 6"
    ):
        LeRobotDatasetReader(root).validate()


def test_missing_column_names_file_and_key(write_dataset) -> None:
    root, _ = write_dataset(lengths=(4,))
    path = root / "data/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["observation.state"]), path)
    with pytest.raises(
        DatasetError, match=r"file-000\.parquet: missing column 'observation.state'"
    ):
        LeRobotDatasetReader(root).validate()


def test_missing_data_file_is_reported(write_dataset) -> None:
    root, _ = write_dataset(lengths=(4,))
    (root / "data/chunk-000/file-000.parquet").unlink()
    with pytest.raises(DatasetError, match=r"file-000\.parquet: file is missing"):
        LeRobotDatasetReader(root).validate()


def test_episode_count_mismatch_is_reported(write_dataset) -> None:
    root, _ = write_dataset(lengths=(4, 4))
    info = json.loads((root / "meta/info.json").read_text())
    info["total_frames"] = 9
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="total_frames is 9 but the episodes add up to 8"):
        LeRobotDatasetReader(root)


def test_corrupted_image_bytes_are_reported(write_dataset) -> None:
    root, _ = write_dataset(lengths=(4,))
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    images = table["observation.images.wrist"].to_pylist()
    images[0] = {"bytes": b"\x89PNG garbage", "path": None}
    column = table.schema.get_field_index("observation.images.wrist")
    table = table.set_column(
        column, "observation.images.wrist", pa.array(images, table.schema.field(column).type)
    )
    pq.write_table(table, path)
    with pytest.raises(
        DatasetError, match=r"cannot decode 'observation.images.wrist' of episode 0"
    ):
        LeRobotDatasetReader(root).validate()


# ---------------------------------------------------------------------- v2.1
def png_bytes(image: np.ndarray) -> bytes:
    """One frame as an image column of a foreign dataset holds it: PNG, encoded here with PIL
    rather than by our writer, so the reader is checked against files it did not write."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_v21(root: Path, episodes: list[dict], fps: int = 20) -> None:
    """The older layout the public LIBERO conversions use: a parquet per episode, jsonl metadata,
    and variable-length list columns as HF `datasets` writes them."""
    features = default_features(image_size=(32, 32), reasoning=False)
    info = {
        "codebase_version": "v2.1",
        "robot_type": "panda",
        "fps": fps,
        "chunks_size": 1000,
        "total_episodes": len(episodes),
        "total_frames": sum(len(e["action"]) for e in episodes),
        "total_tasks": 1,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": None,
        "features": {key: feature.to_json() for key, feature in features.items()},
    }
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/tasks.jsonl").write_text(
        json.dumps({"task_index": 0, "task": "stack the cubes"}) + "\n"
    )
    lines, start = [], 0
    for index, episode in enumerate(episodes):
        length = len(episode["action"])
        lines.append(
            json.dumps({"episode_index": index, "tasks": ["stack the cubes"], "length": length})
        )
        table = pa.table(
            {
                "observation.images.agentview": [
                    {"bytes": png_bytes(i), "path": None}
                    for i in episode["observation.images.agentview"]
                ],
                "observation.images.wrist": [
                    {"bytes": png_bytes(i), "path": None}
                    for i in episode["observation.images.wrist"]
                ],
                "observation.state": pa.array(
                    [s.tolist() for s in episode["observation.state"]], pa.list_(pa.float32())
                ),
                "action": pa.array([a.tolist() for a in episode["action"]], pa.list_(pa.float32())),
                "timestamp": pa.array(np.arange(length) / fps, pa.float32()),
                "frame_index": pa.array(np.arange(length)),
                "episode_index": pa.array(np.full(length, index)),
                "index": pa.array(np.arange(start, start + length)),
                "task_index": pa.array(np.zeros(length, np.int64)),
            }
        )
        path = root / f"data/chunk-000/episode_{index:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        start += length
    (root / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")


def test_reads_v21_layout(tmp_path: Path) -> None:
    episodes = [make_episode(length, seed, reasoning=False) for seed, length in enumerate((5, 8))]
    write_v21(tmp_path / "v21", episodes)
    reader = LeRobotDatasetReader(tmp_path / "v21")
    reader.validate()
    assert reader.version == "v2.1"
    assert reader.tasks == ["stack the cubes"]
    assert [episode.length for episode in reader.episodes] == [5, 8]
    numeric = reader.numeric_columns()
    np.testing.assert_array_equal(
        numeric["action"], np.concatenate([np.stack(e["action"]) for e in episodes])
    )
    assert numeric["observation.state"].dtype == np.float32 and numeric[
        "observation.state"
    ].shape == (13, 8)
    np.testing.assert_array_equal(
        reader.image("observation.images.wrist", 6), episodes[1]["observation.images.wrist"][1]
    )
    assert (
        reader.stats["action"]["count"][0] == 13
    )  # computed from parquet: v2.1 has no stats.json here


def test_v21_missing_episodes_file_is_reported(tmp_path: Path) -> None:
    write_v21(tmp_path / "v21", [make_episode(3, 0, reasoning=False)])
    (tmp_path / "v21/meta/episodes.jsonl").unlink()
    with pytest.raises(DatasetError, match=r"episodes\.jsonl: file is missing"):
        LeRobotDatasetReader(tmp_path / "v21")


# ---------------------------------------------------------------------- video
def smooth_frames(length: int, size: int, seed: int) -> np.ndarray:
    """Moving colour gradients: like camera images, unlike noise, a video codec keeps them well."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    phase = rng.uniform(0, 1, 3)
    frames = [
        np.stack(
            [127 + 100 * np.sin(np.pi * (x + y * c / 2 + phase[c] + t / 20)) for c in range(3)], -1
        )
        for t in range(length)
    ]
    return np.stack(frames).astype(np.uint8)


def test_video_features_round_trip_closely(tmp_path: Path) -> None:
    root = tmp_path / "video"
    writer = LeRobotDatasetWriter(
        root, features=default_features(image_size=(64, 64), video=True), fps=20
    )
    episodes = []
    for seed, length in enumerate((6, 9)):
        episode = make_episode(length, seed, image_size=(64, 64))
        episode["observation.images.agentview"] = list(smooth_frames(length, 64, seed))
        episode["observation.images.wrist"] = list(smooth_frames(length, 64, seed + 10))
        writer.add_episode(episode, task="t")
        episodes.append(episode)
    reader = LeRobotDatasetReader(root)
    reader.validate()
    assert reader.features["observation.images.agentview"].dtype == "video"
    assert (root / "videos/observation.images.agentview/chunk-000/file-001.mp4").exists()
    assert "observation.images.agentview" not in reader.table.column_names
    for record, written in zip(reader.episodes, episodes, strict=True):
        frames = reader.episode_video("observation.images.agentview", record)
        assert frames.shape == (record.length, 64, 64, 3)
        error = np.abs(
            frames.astype(float) - np.stack(written["observation.images.agentview"])
        ).mean()
        assert error < 4, (
            f"decoded video differs from the written frames (mean abs error {error:.1f})"
        )
    np.testing.assert_array_equal(
        reader.numeric_columns()["action"][6:], np.stack(episodes[1]["action"])
    )


def test_truncated_video_is_reported(write_dataset) -> None:
    root, _ = write_dataset(lengths=(6,), video=True, image_size=(32, 32))
    video = root / "videos/observation.images.wrist/chunk-000/file-000.mp4"
    video.write_bytes(video.read_bytes()[:100])
    with pytest.raises(
        DatasetError, match=r"file-000\.mp4: cannot decode video for 'observation.images.wrist'"
    ):
        LeRobotDatasetReader(root).validate()


# ---------------------------------------------------------------------- columns against info.json
def edit_info(root: Path, edit) -> None:
    """Rewrite meta/info.json through `edit(info)`, as a hand edit or a broken tool would."""
    info = json.loads((root / "meta/info.json").read_text())
    edit(info)
    (root / "meta/info.json").write_text(json.dumps(info))


def test_column_without_a_declared_feature_names_file_and_key(write_dataset) -> None:
    root, _ = write_dataset(lengths=(4, 3))
    edit_info(root, lambda info: info["features"].pop("reasoning.plan"))
    with pytest.raises(
        DatasetError,
        match=r"file-000\.parquet: column 'reasoning.plan' is not declared in .*info\.json",
    ):
        LeRobotDatasetReader(root).validate(decode=False)


def test_declared_dtype_mismatch_names_file_and_key(write_dataset) -> None:
    root, _ = write_dataset(lengths=(4,))
    edit_info(root, lambda info: info["features"]["action"].update(dtype="float64"))
    with pytest.raises(
        DatasetError, match=r"file-000\.parquet: column 'action' holds float values.*float64"
    ):
        LeRobotDatasetReader(root).validate(decode=False)


def test_variable_length_lists_of_the_wrong_size_name_file_and_key(tmp_path: Path) -> None:
    episodes = [make_episode(3, 0, reasoning=False)]
    write_v21(tmp_path / "v21", episodes)
    edit_info(tmp_path / "v21", lambda info: info["features"]["action"].update(shape=[6]))
    with pytest.raises(
        DatasetError, match=r"episode_000000\.parquet: column 'action' holds lists of 7 values"
    ):
        LeRobotDatasetReader(tmp_path / "v21").validate(decode=False)


@pytest.mark.parametrize(
    ("encoded", "error"),
    [
        (b"\x89PNG garbage", r"cannot decode 'observation.images.wrist' of episode 1 frame 5"),
        (
            png_bytes(np.zeros((16, 32, 3), np.uint8)),
            r"'observation.images.wrist' of episode 1 frame 5 is \(16, 32, 3\), declared "
            r"\(32, 32, 3\)",
        ),
    ],
    ids=["garbage", "wrong size"],
)
def test_bad_image_mid_episode_is_found_by_the_full_check_only(
    write_dataset, encoded: bytes, error: str
) -> None:
    root, _ = write_dataset(lengths=(4, 8))
    set_image_bytes(root, "observation.images.wrist", 4 + 5, encoded)  # episode 1, frame 5
    LeRobotDatasetReader(root).validate()  # the quick check decodes frame 0 of each episode only
    with pytest.raises(DatasetError, match=rf"file-000\.parquet: {error}"):
        LeRobotDatasetReader(root).validate(full=True)


def test_full_check_decodes_every_frame_and_reports_progress(write_dataset) -> None:
    root, _ = write_dataset(lengths=(4, 8))
    decoded: list[int] = []
    LeRobotDatasetReader(root).validate(full=True, progress=decoded.append)
    assert decoded == [4, 4, 8, 8]  # frames per episode, for each of the two cameras


# ---------------------------------------------------------------------- info.json values
@pytest.mark.parametrize("key", ["data_path", "video_path"])
@pytest.mark.parametrize("prefix", ["../outside/", "/absolute/"])
def test_paths_outside_the_dataset_root_are_refused(
    write_dataset, tmp_path: Path, key: str, prefix: str
) -> None:
    root, _ = write_dataset(lengths=(3,), video=key == "video_path")
    info = json.loads((root / "meta/info.json").read_text())
    template = info[key]
    # the files exist where the template points, so only the check can refuse them
    if prefix.startswith("/"):
        prefix = f"{tmp_path}/outside/"
    relative = template.split("/", 1)[1]
    for source in (root / template.split("/")[0]).rglob("*"):
        if not source.is_file():
            continue
        target = tmp_path / "outside" / source.relative_to(root / template.split("/")[0])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    edit_info(root, lambda info: info.update({key: prefix + relative}))
    with pytest.raises(DatasetError, match=rf"info\.json: {key} .* outside the dataset root"):
        LeRobotDatasetReader(root).validate()


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("fps", "twenty", "a positive integer"),
        ("fps", 0, "a positive integer"),
        ("fps", True, "a positive integer"),
        ("total_episodes", -1, "a non-negative integer"),
        ("total_frames", "8", "a non-negative integer"),
        ("chunks_size", 0, "a positive integer"),
        ("data_path", 3, "a path template"),
        ("data_path", "data/{chunk:03d}.parquet", "a path template"),
    ],
)
def test_bad_info_values_name_the_file_the_key_and_what_was_expected(
    write_dataset, key: str, value: object, expected: str
) -> None:
    root, _ = write_dataset(lengths=(4, 4))
    edit_info(root, lambda info: info.update({key: value}))
    with pytest.raises(DatasetError, match=rf"info\.json: {key} is .*expected {expected}"):
        LeRobotDatasetReader(root).validate(decode=False)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"dtype": "float32", "shape": ["seven"]}, "shape"),
        ({"dtype": "float32", "shape": None}, "shape"),
        ({"dtype": "float32", "shape": 7}, "shape"),
        ({"dtype": 5, "shape": [7]}, "dtype"),
    ],
)
def test_bad_feature_specs_name_the_file_and_the_key(
    write_dataset, spec: dict, expected: str
) -> None:
    root, _ = write_dataset(lengths=(4,))
    edit_info(root, lambda info: info["features"].update(action=spec))
    with pytest.raises(DatasetError, match=rf"info\.json: feature 'action'.*{expected}"):
        LeRobotDatasetReader(root)


def test_info_that_is_not_an_object_is_reported(write_dataset) -> None:
    root, _ = write_dataset(lengths=(4,))
    (root / "meta/info.json").write_text("[1, 2]")
    with pytest.raises(DatasetError, match=r"info\.json: expected a JSON object"):
        LeRobotDatasetReader(root)
