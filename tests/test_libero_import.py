from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from data import layout
from data.libero_import import (
    SOURCES_PATH,
    LiberoImportError,
    import_libero_hdf5,
    task_from_file_name,
)
from data.reader import LeRobotDatasetReader
from data.synthetic_libero import (
    AGENTVIEW_MARKER_COLOR,
    MARKER_SIZE,
    WRIST_MARKER_COLOR,
    upright_marker_is_top_left,
    write_synthetic_libero_hdf5,
)
from data.writer import LeRobotDatasetWriter

CAMERAS = {
    "observation.images.agentview": ("obs/agentview_rgb", AGENTVIEW_MARKER_COLOR),
    "observation.images.wrist": ("obs/eye_in_hand_rgb", WRIST_MARKER_COLOR),
}


# ---------------------------------------------------------------------- helpers
def source_demos(path: Path) -> list[dict[str, np.ndarray]]:
    """Every demo of a LIBERO file in numeric order, read independently of the importer."""
    with h5py.File(path, "r") as file:
        names = sorted(file["data"].keys(), key=lambda name: int(name.split("_")[1]))
        return [
            {
                "name": name,
                "actions": file["data"][name]["actions"][()],
                "ee_states": file["data"][name]["obs/ee_states"][()],
                "gripper_states": file["data"][name]["obs/gripper_states"][()],
                "obs/agentview_rgb": file["data"][name]["obs/agentview_rgb"][()],
                "obs/eye_in_hand_rgb": file["data"][name]["obs/eye_in_hand_rgb"][()],
            }
            for name in names
        ]


def episode_rows(reader: LeRobotDatasetReader, episode_index: int) -> slice:
    episode = reader.episodes[episode_index]
    return slice(episode.from_index, episode.to_index)


def imported(tmp_path: Path, *files: Path, **kwargs) -> LeRobotDatasetReader:
    import_libero_hdf5(list(files), tmp_path / "out", progress=False, **kwargs)
    return LeRobotDatasetReader(tmp_path / "out")


def set_problem_info(path: Path, problem_info: dict | None, bddl: str | None) -> None:
    with h5py.File(path, "a") as file:
        attrs = file["data"].attrs
        for name, value in (("problem_info", problem_info), ("bddl_file_content", bddl)):
            if name in attrs:
                del attrs[name]
            if value is not None:
                attrs[name] = json.dumps(value) if isinstance(value, dict) else value


def source_of_each_episode(output: Path) -> list[tuple[str, str]]:
    entries = json.loads((output / SOURCES_PATH).read_text())["episodes"]
    total = LeRobotDatasetReader(output).num_episodes
    return [(entry["file"], entry["demo"]) for entry in entries[:total]]


@pytest.fixture
def libero_file(tmp_path: Path) -> Path:
    return write_synthetic_libero_hdf5(
        tmp_path / "src" / "a_demo.hdf5", num_demos=3, length=[5, 7, 9]
    )


# ---------------------------------------------------------------------- conversion
def test_every_demo_becomes_an_episode_of_the_same_length(
    tmp_path: Path, libero_file: Path
) -> None:
    summary = import_libero_hdf5([libero_file], tmp_path / "out", progress=False)
    reader = LeRobotDatasetReader(tmp_path / "out")
    assert [episode.length for episode in reader.episodes] == [5, 7, 9]
    assert (summary.files, summary.episodes, summary.frames, summary.skipped) == (1, 3, 21, 0)
    assert not any(key.startswith("reasoning.") for key in reader.features)


def test_demos_are_imported_in_numeric_not_lexical_order(tmp_path: Path) -> None:
    lengths = [2 + index for index in range(11)]  # each demo recognisable by its length
    path = write_synthetic_libero_hdf5(tmp_path / "many_demo.hdf5", num_demos=11, length=lengths)
    reader = imported(tmp_path, path)
    assert [episode.length for episode in reader.episodes] == lengths  # demo_10 last, after demo_2
    actions = reader.numeric_columns()["action"]
    for index, demo in enumerate(source_demos(path)):
        np.testing.assert_array_equal(
            actions[episode_rows(reader, index)], demo["actions"].astype(np.float32)
        )


def test_images_are_rotated_upright_exactly(tmp_path: Path, libero_file: Path) -> None:
    reader = imported(tmp_path, libero_file)
    for index, demo in enumerate(source_demos(libero_file)):
        for row_in_episode, row in enumerate(
            range(*episode_rows(reader, index).indices(reader.num_frames))
        ):
            for key, (source_key, marker_color) in CAMERAS.items():
                stored = demo[source_key][row_in_episode]
                image = reader.image(key, row)
                # The file keeps LIBERO's upside-down render: marker bottom-right; ours: top-left.
                assert not upright_marker_is_top_left(stored, marker_color)
                assert (stored[-MARKER_SIZE:, -MARKER_SIZE:] == marker_color).all()
                assert upright_marker_is_top_left(image, marker_color)
                np.testing.assert_array_equal(image, np.rot90(stored, 2))


def test_state_is_eef_then_gripper_in_float32_and_actions_are_unchanged(
    tmp_path: Path, libero_file: Path
) -> None:
    reader = imported(tmp_path, libero_file)
    columns = reader.numeric_columns()
    assert columns["observation.state"].dtype == np.float32
    assert columns["action"].dtype == np.float32
    for index, demo in enumerate(source_demos(libero_file)):
        rows = episode_rows(reader, index)
        expected_state = np.concatenate([demo["ee_states"], demo["gripper_states"]], axis=1).astype(
            np.float32
        )
        np.testing.assert_array_equal(columns["observation.state"][rows], expected_state)
        np.testing.assert_array_equal(columns["action"][rows], demo["actions"].astype(np.float32))


def test_resize_keeps_the_upright_orientation(tmp_path: Path, libero_file: Path) -> None:
    reader = imported(tmp_path, libero_file, image_size=(64, 48))
    assert reader.features["observation.images.agentview"].shape == (64, 48, 3)
    image = reader.image("observation.images.agentview", 0).astype(int)
    assert image.shape == (64, 48, 3)
    # The 8x8 red marker shrinks to ~4x3 pixels and must still be top-left.
    assert image[0, 0, 0] > 200 and image[0, 0, 1] < 60
    assert image[-1, -1, 0] < 230 or image[-1, -1, 1] > 60  # not a marker bottom-right


def test_video_import_decodes_upright_frames(tmp_path: Path, libero_file: Path) -> None:
    reader = imported(tmp_path, libero_file, video=True)
    reader.validate()
    frames = reader.episode_video("observation.images.agentview", reader.episodes[1])
    assert frames.shape == (7, 128, 128, 3)
    marker = frames[:, : MARKER_SIZE - 2, : MARKER_SIZE - 2].astype(float).mean(axis=(0, 1, 2))
    opposite = (
        frames[:, -(MARKER_SIZE - 2) :, -(MARKER_SIZE - 2) :].astype(float).mean(axis=(0, 1, 2))
    )
    assert marker[0] > 200 and marker[1] < 80  # lossy, but clearly red where the marker belongs
    assert opposite[0] < 200


def test_dataset_validates_and_stats_count_every_frame(tmp_path: Path, libero_file: Path) -> None:
    reader = imported(tmp_path, libero_file)
    reader.validate()
    stats = json.loads((tmp_path / "out" / layout.STATS_PATH).read_text())
    assert reader.num_frames == 21
    for key in ("observation.state", "action"):
        assert stats[key]["count"] == [21]


# ---------------------------------------------------------------------- task text
def test_task_comes_from_problem_info_first(tmp_path: Path) -> None:
    path = write_synthetic_libero_hdf5(tmp_path / "KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5")
    set_problem_info(
        path, {"language_instruction": "open the drawer"}, "(:language close the drawer)"
    )
    assert imported(tmp_path, path).tasks == ["open the drawer"]


def test_task_falls_back_to_bddl_language(tmp_path: Path) -> None:
    path = write_synthetic_libero_hdf5(tmp_path / "KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5")
    bddl = "(define (problem P)\n  (:domain robosuite)\n  (:language Close the  drawer)\n)"
    set_problem_info(path, {"problem_name": "p", "domain_name": "robosuite"}, bddl)
    assert imported(tmp_path, path).tasks == ["close the drawer"]


def test_task_falls_back_to_the_file_name(tmp_path: Path) -> None:
    path = write_synthetic_libero_hdf5(tmp_path / "KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5")
    set_problem_info(path, None, None)
    assert imported(tmp_path, path).tasks == ["turn on the stove"]


@pytest.mark.parametrize(
    ("file_name", "task"),
    [
        ("KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5", "turn on the stove"),
        ("LIVING_ROOM_SCENE10_put_the_mug_on_the_plate_demo.hdf5", "put the mug on the plate"),
        (
            "pick_up_the_black_bowl_and_place_it_on_the_plate_demo.hdf5",
            "pick up the black bowl and place it on the plate",
        ),
    ],
)
def test_task_from_file_name_strips_scene_prefix_and_demo_suffix(file_name: str, task: str) -> None:
    assert task_from_file_name(file_name) == task


# ---------------------------------------------------------------------- resuming
def test_resume_skips_demos_already_imported(tmp_path: Path) -> None:
    file_a = write_synthetic_libero_hdf5(
        tmp_path / "a_demo.hdf5", num_demos=3, length=[4, 5, 6], seed=1
    )
    file_b = write_synthetic_libero_hdf5(
        tmp_path / "b_demo.hdf5", num_demos=2, length=[7, 8], seed=2, instruction="open the drawer"
    )
    output = tmp_path / "out"
    import_libero_hdf5([file_a], output, progress=False)
    summary = import_libero_hdf5([file_a, file_b], output, progress=False)

    assert (summary.episodes, summary.frames, summary.skipped) == (2, 15, 3)
    reader = LeRobotDatasetReader(output)
    reader.validate()
    assert [episode.length for episode in reader.episodes] == [4, 5, 6, 7, 8]
    assert reader.tasks == ["put the bowl on the plate", "open the drawer"]
    assert json.loads((output / layout.STATS_PATH).read_text())["action"]["count"] == [30]
    again = import_libero_hdf5([file_b, file_a], output, progress=False)
    assert (again.episodes, again.skipped) == (0, 5)
    assert LeRobotDatasetReader(output).num_episodes == 5


def test_resume_after_a_crash_mid_import_imports_each_demo_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file_a = write_synthetic_libero_hdf5(tmp_path / "a_demo.hdf5", num_demos=4, length=[3, 4, 5, 6])
    output = tmp_path / "out"
    real_add_episode = LeRobotDatasetWriter.add_episode
    calls = []

    def add_episode_then_crash(self, columns, task):
        calls.append(task)
        if (
            len(calls) == 3
        ):  # the import record already names this episode; the commit never happens
            raise KeyboardInterrupt
        return real_add_episode(self, columns, task)

    monkeypatch.setattr(LeRobotDatasetWriter, "add_episode", add_episode_then_crash)
    with pytest.raises(KeyboardInterrupt):
        import_libero_hdf5([file_a], output, progress=False)
    monkeypatch.setattr(LeRobotDatasetWriter, "add_episode", real_add_episode)
    assert LeRobotDatasetReader(output).num_episodes == 2

    summary = import_libero_hdf5([file_a], output, progress=False)
    assert (summary.episodes, summary.skipped) == (2, 2)
    reader = LeRobotDatasetReader(output)
    assert [episode.length for episode in reader.episodes] == [3, 4, 5, 6]
    assert source_of_each_episode(output) == [
        ("a_demo.hdf5", f"demo_{index}") for index in range(4)
    ]


def test_resume_with_other_image_size_names_the_difference(
    tmp_path: Path, libero_file: Path
) -> None:
    import_libero_hdf5([libero_file], tmp_path / "out", progress=False)
    with pytest.raises(LiberoImportError, match=r"observation\.images\.agentview.*image_size"):
        import_libero_hdf5([libero_file], tmp_path / "out", image_size=(64, 64), progress=False)


def test_a_different_file_with_an_imported_name_is_refused(
    tmp_path: Path, libero_file: Path
) -> None:
    import_libero_hdf5([libero_file], tmp_path / "out", progress=False)
    impostor = write_synthetic_libero_hdf5(
        tmp_path / "other" / libero_file.name, num_demos=3, seed=99
    )
    with pytest.raises(LiberoImportError, match=r"a_demo\.hdf5: data/demo_0/actions differ"):
        import_libero_hdf5([impostor], tmp_path / "out", progress=False)


def test_a_dataset_not_written_by_the_importer_is_not_resumed(
    tmp_path: Path, libero_file: Path
) -> None:
    import_libero_hdf5([libero_file], tmp_path / "out", progress=False)
    (tmp_path / "out" / SOURCES_PATH).unlink()
    with pytest.raises(LiberoImportError, match="import_sources.json"):
        import_libero_hdf5([libero_file], tmp_path / "out", progress=False)


# ---------------------------------------------------------------------- errors
def test_missing_key_names_the_file_and_key(tmp_path: Path, libero_file: Path) -> None:
    with h5py.File(libero_file, "a") as file:
        del file["data/demo_1/obs/ee_states"]
    with pytest.raises(
        LiberoImportError, match=r"a_demo\.hdf5: missing key data/demo_1/obs/ee_states"
    ):
        import_libero_hdf5([libero_file], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # checked before anything was written


def test_wrong_shape_names_the_file_key_and_expected_shape(
    tmp_path: Path, libero_file: Path
) -> None:
    with h5py.File(libero_file, "a") as file:
        del file["data/demo_2/obs/ee_states"]
        file["data/demo_2/obs/ee_states"] = np.zeros((9, 5))
    expected = r"a_demo\.hdf5: data/demo_2/obs/ee_states has shape \(9, 5\), expected \(T, 6\)"
    with pytest.raises(LiberoImportError, match=expected):
        import_libero_hdf5([libero_file], tmp_path / "out", progress=False)


def test_mismatched_step_counts_name_both_keys(tmp_path: Path, libero_file: Path) -> None:
    with h5py.File(libero_file, "a") as file:
        del file["data/demo_0/obs/gripper_states"]
        file["data/demo_0/obs/gripper_states"] = np.zeros((4, 2))
    with pytest.raises(
        LiberoImportError, match=r"data/demo_0/obs/gripper_states has 4 steps.*actions has 5"
    ):
        import_libero_hdf5([libero_file], tmp_path / "out", progress=False)


def test_images_that_are_not_uint8_are_refused(tmp_path: Path, libero_file: Path) -> None:
    with h5py.File(libero_file, "a") as file:
        images = file["data/demo_0/obs/eye_in_hand_rgb"][()]
        del file["data/demo_0/obs/eye_in_hand_rgb"]
        file["data/demo_0/obs/eye_in_hand_rgb"] = images.astype(np.float32)
    with pytest.raises(
        LiberoImportError, match=r"data/demo_0/obs/eye_in_hand_rgb has dtype float32"
    ):
        import_libero_hdf5([libero_file], tmp_path / "out", progress=False)


def test_a_file_that_is_not_hdf5_is_named(tmp_path: Path) -> None:
    bogus = tmp_path / "notes_demo.hdf5"
    bogus.write_text("not hdf5")
    with pytest.raises(LiberoImportError, match=r"notes_demo\.hdf5: not a readable HDF5 file"):
        import_libero_hdf5([bogus], tmp_path / "out", progress=False)
