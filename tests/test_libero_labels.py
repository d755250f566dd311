"""Generated LIBERO demonstrations: training scenes drawn from the BDDL regions (never an
evaluation init state), reasoning labels that agree with a segmentation render of the stored
(upright) images, and `generate_dataset` episodes that read back with the keys and labels of our
suites and the first frame of the scene they came from.
"""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

pytestmark = pytest.mark.libero
pytest.importorskip("libero.libero", reason="needs the `libero` extra: pip install -e '.[libero]'")

import sim  # noqa: E402
from data.reader import LeRobotDatasetReader  # noqa: E402
from data.reasoning import Reasoning  # noqa: E402
from sim.generate import GenerationConfig, generate_dataset  # noqa: E402
from sim.labels import EpisodeLabeler, label_source_of, motion_primitive  # noqa: E402
from sim.libero_labels import LiberoLabels, object_display_names  # noqa: E402

IMAGE = 128


def object_positions(env) -> np.ndarray:
    task_env = env.libero_env.env
    return np.stack(
        [task_env.sim.data.body_xpos[task_env.obj_body_id[n]] for n in task_env.objects_dict]
    )


def test_training_scenes_are_reproducible_and_none_is_an_init_state() -> None:
    env = sim.make("libero_spatial", 0, render_images=False)
    try:
        scenes = []
        for seed in (3, 4, 3):
            _, info = env.reset(seed=seed)
            assert info["scene_seed"] == seed and info["init_state"] is None
            scenes.append(object_positions(env))
        np.testing.assert_array_equal(scenes[0], scenes[2])
        assert np.abs(scenes[0] - scenes[1]).max() > 0.005, "another seed, another placement"
        for init_state in range(0, 50, 7):
            env.reset(options={"init_state": init_state})
            assert np.abs(object_positions(env) - scenes[0]).max() > 0.005
    finally:
        env.close()


def test_display_names_keep_the_number_only_where_a_kind_repeats() -> None:
    names = object_display_names(["akita_black_bowl_1", "akita_black_bowl_2", "plate_1"])
    assert names == {
        "akita_black_bowl_1": "akita black bowl 1",
        "akita_black_bowl_2": "akita black bowl 2",
        "plate_1": "plate",
    }


def test_motion_words_read_left_and_right_as_the_stored_image_shows_them() -> None:
    """LIBERO's stored image is the camera's view mirrored: +y (the robot's left) is image-left."""
    env = sim.make("libero_object", 0, image_size=IMAGE)
    try:
        env.reset(options={"init_state": 0})
        labels = LiberoLabels(env)
        before = labels.gripper_pixel()
        for _ in range(6):
            env.step(np.array([0, 0.8, 0, 0, 0, 0, -1.0]))
        after = labels.gripper_pixel()
        assert after[0] < before[0] - 3, (before, after)
        assert motion_primitive(np.array([0, 0.8, 0, 0, 0, 0, -1.0]), None, labels.y_words) == (
            "move left"
        )
    finally:
        env.close()


@pytest.mark.parametrize(("suite", "task"), [("libero_spatial", 0), ("libero_object", 3)])
def test_labels_agree_with_a_segmentation_render_of_the_stored_image(suite, task) -> None:
    env = sim.make(suite, task, image_size=IMAGE)
    try:
        env.reset(options={"init_state": 1})
        for _ in range(8):  # lower the open gripper so its fingers frame the grip site
            env.step(np.array([0, 0, -0.6, 0, 0, 0, -1.0]))
        labels = label_source_of(env)
        task_env = env.libero_env.env
        raw = task_env.sim.render(
            width=IMAGE, height=IMAGE, camera_name="agentview", segmentation=True
        )
        upright = raw[::-1, ::-1]  # as the env stores its camera images
        kinds, ids = upright[..., 0], upright[..., 1]
        geoms = np.where(kinds == int(mujoco.mjtObj.mjOBJ_GEOM), ids, -1)
        sites = np.where(kinds == int(mujoco.mjtObj.mjOBJ_SITE), ids, -1)
        x, y = labels.gripper_pixel()
        grip_site = task_env.robots[0].eef_site_id
        assert grip_site in sites[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2], (x, y)

        boxes = {box.name: np.array(box.box) for box in labels.object_boxes()}
        assert set(boxes) == set(labels.names.values())
        for name in labels.labelled:
            mask = np.isin(geoms, labels.geoms_of(name))
            assert mask.any(), f"{name} is not visible at this init state"
            rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            seen = np.array([columns[0], rows[0], columns[-1], rows[-1]])
            box = boxes[labels.names[name]]
            # the box holds what is seen (a mesh's bounding box is a little larger than it)
            assert (box[:2] <= seen[:2] + 1).all() and (box[2:] >= seen[2:] - 1).all(), (
                name,
                box,
                seen,
            )
            assert np.abs(box - seen).max() <= 10, (name, box, seen)
    finally:
        env.close()


def test_generated_libero_episodes_read_back_with_keys_labels_and_their_scene(tmp_path) -> None:
    out = tmp_path / "libero"
    config = GenerationConfig(suite="libero_object", episodes_per_task=1, tasks=("0",))
    summary = generate_dataset(config, out, workers=1, progress=False)
    assert summary.episodes == 1
    reader = LeRobotDatasetReader(out)
    reader.validate()
    (episode,) = reader.episodes
    images = {
        key: reader.episode_frames(key, episode, count=1)
        for key in ("observation.images.agentview", "observation.images.wrist")
    }
    assert all(frames.shape[1:] == (IMAGE, IMAGE, 3) for frames in images.values())
    numeric = reader.numeric_columns()
    assert numeric["observation.state"].shape == (episode.length, 8)
    assert numeric["action"].shape == (episode.length, 7)
    chains = []
    for row in range(episode.length):
        frame = {k: reader.table[k][row].as_py() for k in reader.table.column_names}
        frame = {k: v for k, v in frame.items() if k.startswith("reasoning.")}
        frame["reasoning.gripper_px"] = np.asarray(frame["reasoning.gripper_px"], np.int16)
        chains.append(Reasoning.from_frame(frame))
    assert chains[0].plan == ("pick up the alphabet soup", "place it in the basket")
    subtasks = [chain.subtask for chain in chains]
    switch = subtasks.index("place it in the basket")
    assert set(subtasks[:switch]) == {"pick up the alphabet soup"}
    moves = [chain.move for chain in chains]
    assert "close gripper" in moves[:switch] and "open gripper" in moves[switch:]
    assert all("alphabet soup" in {box.name for box in chain.objects} for chain in chains)

    # Episode 0 is training scene 0: its first frame is that scene, image for image.
    env = sim.make("libero_object", 0, image_size=IMAGE)
    try:
        observation, _ = env.reset(seed=0)
        for key, frames in images.items():
            np.testing.assert_array_equal(frames[0], observation[key], err_msg=key)
        np.testing.assert_array_equal(
            numeric["observation.state"][0], observation["observation.state"]
        )
        labeler = EpisodeLabeler(label_source_of(env))
        assert labeler.plan == chains[0].plan
    finally:
        env.close()
