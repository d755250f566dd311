"""The training-sample view: action chunks and observation history at episode edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_episode
from torch.utils.data import DataLoader

from data.reasoning import parse_reasoning
from data.schema import REASONING_FIELDS, CameraSpec, ObservationSpec
from data.torch_dataset import ActionChunkDataset
from data.writer import LeRobotDatasetWriter


def test_chunk_inside_episode_is_the_next_actions(write_dataset) -> None:
    root, episodes = write_dataset(lengths=(7, 5, 9))
    dataset = ActionChunkDataset(root, action_horizon=4)
    assert len(dataset) == 21
    sample = dataset[8]  # episode 1, frame 1
    assert (sample["episode_index"], sample["frame_index"], sample["index"]) == (1, 1, 8)
    np.testing.assert_array_equal(sample["action"].numpy(), np.stack(episodes[1]["action"][1:5]))
    assert not sample["action_is_pad"].any()
    np.testing.assert_array_equal(
        sample["observation.state"].numpy(), episodes[1]["observation.state"][1]
    )
    np.testing.assert_array_equal(
        sample["observation.images.agentview"].numpy(),
        episodes[1]["observation.images.agentview"][1],
    )  # (H, W, 3) as stored and as an environment renders: the layout of an observation
    assert sample["observation.images.wrist"].dtype == torch.uint8
    assert sample["task"] == "task 1"


def test_chunk_at_episode_end_is_padded_with_the_last_action(write_dataset) -> None:
    root, episodes = write_dataset(lengths=(7, 5, 9))
    dataset = ActionChunkDataset(root, action_horizon=4)
    sample = dataset[7 + 3]  # episode 1 (length 5), frame 3: frames 3, 4 then two pads
    expected = np.stack(
        [
            episodes[1]["action"][3],
            episodes[1]["action"][4],
            episodes[1]["action"][4],
            episodes[1]["action"][4],
        ]
    )
    np.testing.assert_array_equal(sample["action"].numpy(), expected)
    assert sample["action_is_pad"].tolist() == [False, False, True, True]
    last = dataset[7 + 4]
    assert last["action_is_pad"].tolist() == [False, True, True, True]
    # never leaks into the next episode
    assert not np.isin(np.stack(episodes[2]["action"]), last["action"].numpy()).all(axis=1).any()


def test_history_at_episode_start_repeats_the_first_frame(write_dataset) -> None:
    root, episodes = write_dataset(lengths=(7, 5, 9))
    dataset = ActionChunkDataset(root, action_horizon=2, n_obs_steps=3)
    sample = dataset[12]  # episode 2, frame 0
    assert sample["observation.state"].shape == (3, 8)
    assert sample["observation.images.agentview"].shape == (3, 32, 32, 3)
    assert sample["observation_is_pad"].tolist() == [True, True, False]
    for step in range(3):
        np.testing.assert_array_equal(
            sample["observation.state"][step].numpy(), episodes[2]["observation.state"][0]
        )
    middle = dataset[12 + 4]
    assert middle["observation_is_pad"].tolist() == [False, False, False]
    np.testing.assert_array_equal(
        middle["observation.state"].numpy(), np.stack(episodes[2]["observation.state"][2:5])
    )


def test_reasoning_labels_come_with_the_sample(write_dataset) -> None:
    root, episodes = write_dataset(lengths=(6,))
    sample = ActionChunkDataset(root, action_horizon=2)[4]
    assert set(REASONING_FIELDS) <= sample.keys(), "every schema reasoning field is served"
    assert sample["reasoning.subtask"] == "place it in the bowl"
    assert sample["reasoning.plan"] == "pick up the red cube; place it in the bowl"
    np.testing.assert_array_equal(
        sample["reasoning.gripper_px"].numpy(), episodes[0]["reasoning.gripper_px"][4]
    )
    assert sample["reasoning.gripper_px"].dtype == torch.int16
    assert (
        ActionChunkDataset(root, action_horizon=2, include_reasoning=False)[4]
        .keys()
        .isdisjoint({"reasoning.subtask", "reasoning.gripper_px"})
    )
    assert (
        parse_reasoning(f"SUBTASK: {sample['reasoning.subtask']}.").subtask
        == sample["reasoning.subtask"]
    )


def test_observation_spec_is_the_stored_resolution(write_dataset) -> None:
    root, _ = write_dataset(lengths=(3,), image_size=(24, 32))  # not square: H and W stay apart
    dataset = ActionChunkDataset(root, action_horizon=2, cameras=["wrist"])
    assert dataset.observation_spec == ObservationSpec((CameraSpec("wrist", 24, 32),), 8)
    assert dataset[0]["observation.images.wrist"].shape == (24, 32, 3)


def test_episode_subset_and_camera_selection(write_dataset) -> None:
    root, _ = write_dataset(lengths=(7, 5, 9))
    dataset = ActionChunkDataset(root, action_horizon=3, episodes=[2, 0], cameras=["wrist"])
    assert len(dataset) == 16
    assert dataset[0]["episode_index"] == 2 and dataset[9]["episode_index"] == 0
    assert "observation.images.agentview" not in dataset[0]
    with pytest.raises(KeyError, match=r"no episodes \[5\]"):
        ActionChunkDataset(root, action_horizon=3, episodes=[5])
    with pytest.raises(KeyError, match="no camera"):
        ActionChunkDataset(root, action_horizon=3, cameras=["top"])


def test_dataloader_batches_with_workers(write_dataset) -> None:
    root, _ = write_dataset(lengths=(7, 5, 9))
    loader = DataLoader(
        ActionChunkDataset(root, action_horizon=4),
        batch_size=8,
        shuffle=True,
        num_workers=2,
        generator=torch.Generator().manual_seed(0),
    )
    batches = list(loader)
    assert sum(len(batch["task"]) for batch in batches) == 21
    first = batches[0]
    assert first["action"].shape == (8, 4, 7) and first["action_is_pad"].shape == (8, 4)
    assert first["observation.images.wrist"].shape == (8, 32, 32, 3)
    assert sorted(int(i) for batch in batches for i in batch["index"]) == list(range(21))


def test_video_dataset_serves_the_decoded_frames(write_dataset) -> None:
    root, _ = write_dataset(lengths=(5, 6), video=True, image_size=(32, 32))
    dataset = ActionChunkDataset(root, action_horizon=2)
    decoded = dataset.reader.episode_video("observation.images.wrist", dataset.reader.episodes[1])
    np.testing.assert_array_equal(dataset[5 + 2]["observation.images.wrist"].numpy(), decoded[2])
    assert len(list((root / ".cache").glob("*.npy"))) == 2, (
        "each video stream is decoded once into a cache"
    )


def test_frame_cache_serves_the_same_pixels_as_png_decoding(write_dataset) -> None:
    root, _ = write_dataset(lengths=(7, 5))
    decoding = ActionChunkDataset(root, action_horizon=3, n_obs_steps=2, frame_cache=False)
    cached = ActionChunkDataset(root, action_horizon=3, n_obs_steps=2, frame_cache=True)
    for index in (0, 6, 7, 11):
        for key in ("observation.images.agentview", "observation.images.wrist"):
            torch.testing.assert_close(cached[index][key], decoding[index][key], atol=0, rtol=0)
    LeRobotDatasetWriter(root).add_episode(make_episode(4, seed=9), task="more")
    grown = ActionChunkDataset(root, action_horizon=3, frame_cache=True)
    assert len(grown) == 16, "appending episodes must not reuse the stale cache"
    assert len(list((root / ".cache").glob("observation.images.wrist-*.npy"))) == 1
