"""The processor pipeline: one set of steps for training and inference (same frames, identical
model inputs), the image step as the one place another resolution is resized or refused, and
the observation spec's round trip and errors."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from conftest import TASKS, observation
from torch.utils.data import DataLoader

from data.schema import (
    REASONING_FIELDS,
    STATE_KEY,
    TASK_KEY,
    CameraSpec,
    ObservationSpec,
    SpecError,
    rename_keys,
)
from data.torch_dataset import ActionChunkDataset
from vla.config import VLAConfig
from vla.model import VLAModel
from vla.processor import Processor, ProcessorConfig
from vla.tokenizer import train_tokenizer

# Dropout and augmentation off: the training path is then deterministic and comparable.
PLAIN = ProcessorConfig(reasoning_dropout=0.0, tag_dropout=0.0, image_shift=0)
CONFIG = VLAConfig.named("tiny")  # image_size 64: the 32x32 dataset frames are resized


@pytest.fixture(scope="module")
def tokenizer():
    # the tasks of the written datasets and those of the fake observations
    return train_tokenizer(["task 0", "task 1", *TASKS], vocab_size=512)


def make_processor(
    tokenizer, spec: ObservationSpec, settings: ProcessorConfig = PLAIN
) -> Processor:
    rng = np.random.default_rng(0)
    stats = {
        key: {"mean": rng.normal(size=dim), "std": rng.uniform(0.5, 2.0, dim)}
        for key, dim in ((STATE_KEY, 8), ("action", 7))
    }
    return Processor(CONFIG, settings, stats, tokenizer, spec)


def assert_identical(first, second) -> None:
    """Every field of two ModelInputs equal at atol=0 (same dtype, shape and values)."""
    assert first.images.keys() == second.images.keys()
    for camera in first.images:
        torch.testing.assert_close(first.images[camera], second.images[camera], atol=0, rtol=0)
    for name in ("text_ids", "text_mask", "state", "reasoning_ids", "reasoning_mask"):
        a, b = getattr(first, name), getattr(second, name)
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)


# ====================================================================================== one pipeline
def test_training_and_inference_batches_of_the_same_frames_give_identical_inputs(
    write_dataset, tokenizer
) -> None:
    root, episodes = write_dataset(lengths=(6, 5))
    dataset = ActionChunkDataset(root, action_horizon=3)
    processor = make_processor(tokenizer, dataset.observation_spec)
    batch = next(iter(DataLoader(dataset, batch_size=4, shuffle=False)))  # episode 0, frames 0..3
    # The same frames as a robot would send them: straight from what was written, HxWx3 uint8.
    observations = [
        {
            **{key: episodes[0][key][frame] for key in dataset.observation_spec.image_keys},
            STATE_KEY: episodes[0][STATE_KEY][frame],
            TASK_KEY: "task 0",
        }
        for frame in range(4)
    ]

    inputs, actions, action_is_pad = processor.training_inputs(batch, np.random.default_rng(0))
    inferred = processor.inputs(observations)

    assert inputs.reasoning_ids is not None, "the training path built reasoning targets"
    assert inferred.reasoning_ids is None, "inference has no targets"
    assert_identical(inputs.without_reasoning(), inferred)
    assert inferred.images["agentview"].shape == (4, 3, 64, 64)
    torch.testing.assert_close(
        actions, processor.normalize_actions(batch["action"].float()), atol=0, rtol=0
    )
    assert action_is_pad.dtype == torch.bool and action_is_pad.shape == (4, 3)


def test_training_shifts_images_and_inference_never_does(write_dataset, tokenizer) -> None:
    """image_shift is the pipeline's training-only augmentation: with it, the training path's
    images move (each a translated window of the unshifted one) while everything else and the
    inference path stay exactly as without it."""
    from dataclasses import replace

    root, _ = write_dataset(lengths=(6, 5))
    dataset = ActionChunkDataset(root, action_horizon=3)
    batch = next(iter(DataLoader(dataset, batch_size=4, shuffle=False)))
    plain = make_processor(tokenizer, dataset.observation_spec)
    shifted = make_processor(tokenizer, dataset.observation_spec, replace(PLAIN, image_shift=3))
    reference, _, _ = plain.training_inputs(batch, np.random.default_rng(0))
    augmented, _, _ = shifted.training_inputs(batch, np.random.default_rng(0))
    for camera, images in augmented.images.items():
        assert images.shape == reference.images[camera].shape
        assert not torch.equal(images, reference.images[camera]), camera
        # the interior of each shifted image is the unshifted image moved by (dy, dx) in [-3, 3]
        for moved, original in zip(images, reference.images[camera], strict=True):
            assert any(
                torch.equal(moved[:, 3:-3, 3:-3], original[:, 3 + dy : 61 + dy, 3 + dx : 61 + dx])
                for dy in range(-3, 4)
                for dx in range(-3, 4)
            )
    torch.testing.assert_close(augmented.state, reference.state, atol=0, rtol=0)
    observation_ = {
        **{key: batch[key][0].numpy() for key in dataset.observation_spec.image_keys},
        STATE_KEY: batch[STATE_KEY][0].numpy(),
        TASK_KEY: "task 0",
    }
    assert_identical(shifted.inputs([observation_]), plain.inputs([observation_]))


def test_training_needs_the_chunk_and_every_reasoning_field_reaches_the_targets(
    write_dataset, tokenizer
) -> None:
    root, _ = write_dataset(lengths=(4,))
    dataset = ActionChunkDataset(root, action_horizon=2)
    processor = make_processor(tokenizer, dataset.observation_spec)
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    inputs, _, _ = processor.training_inputs(batch, np.random.default_rng(0))
    target = processor.decode_reasoning(inputs.reasoning_ids, inputs.reasoning_mask)[0]
    for tag in ("PLAN:", "SUBTASK:", "MOVE:", "GRIPPER:", "OBJECTS:"):
        assert tag in target, f"{tag} missing from the target built from {REASONING_FIELDS}"
    with pytest.raises(KeyError, match=r"training batch lacks \['action_is_pad'\]"):
        processor.training_inputs(
            {k: v for k, v in batch.items() if k != "action_is_pad"}, np.random.default_rng(0)
        )


def test_key_map_is_applied_once_for_both_paths(tokenizer) -> None:
    spec = ObservationSpec.uniform(CONFIG.cameras, (32, 32))
    settings = ProcessorConfig(key_map={"observation/image": "observation.images.agentview"})
    mapped = make_processor(tokenizer, spec, settings)
    ours = observation(size=(32, 32))
    robot = rename_keys(ours, {"observation.images.agentview": "observation/image"})
    assert_identical(mapped.inputs([robot]), make_processor(tokenizer, spec).inputs([ours]))
    with pytest.raises(KeyError, match="both map to 'observation.images.agentview'"):
        mapped.inputs([{**robot, "observation.images.agentview": robot["observation/image"]}])


# ====================================================================================== resolution
def test_same_aspect_ratio_is_resized_with_one_note(tokenizer, caplog) -> None:
    processor = make_processor(tokenizer, ObservationSpec.uniform(CONFIG.cameras, (32, 32)))
    large = observation(size=(96, 96))
    with caplog.at_level(logging.WARNING, logger="vla.processor"):
        first = processor.inputs([large])
        processor.inputs([large])
    notes = [r.getMessage() for r in caplog.records if "agentview" in r.getMessage()]
    assert len(notes) == 1 and "96x96" in notes[0] and "32x32" in notes[0], notes
    # Resized straight to the model's size: what a checkpoint trained at 96x96 would see.
    native = make_processor(tokenizer, ObservationSpec.uniform(CONFIG.cameras, (96, 96)))
    assert_identical(first, native.inputs([large]))


def test_other_aspect_ratio_is_refused_naming_key_and_shapes(tokenizer) -> None:
    spec = ObservationSpec((CameraSpec("agentview", 96, 128), CameraSpec("wrist", 96, 128)))
    processor = make_processor(tokenizer, spec)
    processor.inputs([observation(size=(48, 64))])  # half size, same aspect: accepted
    with pytest.raises(
        ValueError, match=r"observation\.images\.agentview.*\(96, 96, 3\).*\(96, 128, 3\)"
    ):
        processor.inputs([observation(size=(96, 96))])
    floats = observation(size=(96, 128))
    floats["observation.images.wrist"] = floats["observation.images.wrist"].astype(np.float32)
    with pytest.raises(ValueError, match=r"observation\.images\.wrist: expected uint8.*float32"):
        processor.inputs([floats])
    with pytest.raises(ValueError, match=r"agentview: the observations of one call.*different"):
        processor.inputs([observation(size=(96, 128)), observation(size=(48, 64))])


def test_processor_refuses_a_spec_that_is_not_the_models(tokenizer) -> None:
    with pytest.raises(
        ValueError, match=r"cameras \['agentview'\].*cameras \['agentview', 'wrist'\]"
    ):
        make_processor(tokenizer, ObservationSpec((CameraSpec("agentview", 32, 32),)))


# ====================================================================================== spec
def test_observation_spec_round_trips_through_json_exactly() -> None:
    spec = ObservationSpec((CameraSpec("agentview", 96, 128), CameraSpec("wrist", 64, 64)), 8)
    payload = json.loads(json.dumps(spec.to_dict()))
    assert ObservationSpec.from_dict(payload) == spec
    assert payload["cameras"][0] == {
        "name": "agentview",
        "key": "observation.images.agentview",
        "height": 96,
        "width": 128,
    }
    assert (payload["image_dtype"], payload["state_dim"]) == ("uint8", 8)
    assert spec.image_keys == ("observation.images.agentview", "observation.images.wrist")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p["cameras"][1].update(height="64"), r"config\.json: cameras\[1\].*height"),
        (lambda p: p["cameras"][0].pop("width"), r"cameras\[0\]: missing \['width'\]"),
        (lambda p: p["cameras"][0].update(key="observation.images.top"), r"key .*top.*agentview"),
        (lambda p: p.update(image_dtype="float32"), r"image_dtype is 'float32'.*'uint8'"),
        (lambda p: p.pop("state_dim"), r"'state_dim' is missing"),
        (lambda p: p.update(state_dims=8), r"unknown key\(s\) \['state_dims'\]"),
        (lambda p: p.update(cameras=[]), r"'cameras' must be a non-empty list"),
    ],
)
def test_bad_observation_spec_names_the_source_and_key(edit, message) -> None:
    payload = ObservationSpec.uniform(("agentview", "wrist"), (64, 64)).to_dict()
    edit(payload)
    with pytest.raises(SpecError, match=message):
        ObservationSpec.from_dict(payload, source="config.json")


def test_stale_chains_come_from_an_earlier_frame_and_are_context_only(
    write_dataset, tokenizer
) -> None:
    """Stale-chain training: the chain is an earlier frame's labels (within the lag, same
    episode), it carries no reasoning loss, and with stale_chain=0 nothing changes."""
    from data.reasoning import Reasoning, format_reasoning

    root, _ = write_dataset(lengths=(12, 9))
    plain = ActionChunkDataset(root, action_horizon=2)
    lagged = ActionChunkDataset(root, action_horizon=2, reasoning_lag=3)
    for item in range(len(lagged)):
        sample, frame = lagged[item], plain[item]["frame_index"]
        earlier = [plain[item - lag] for lag in range(1, 4) if frame - lag >= 0] or [plain[item]]
        labels = Reasoning.from_frame({k.removeprefix("lagged."): v for k, v in sample.items()})
        assert labels in [Reasoning.from_frame(row) for row in earlier], item
    batch = next(iter(DataLoader(lagged, batch_size=6, shuffle=False)))
    stale = make_processor(
        tokenizer,
        lagged.observation_spec,
        PLAIN.__class__(reasoning_dropout=0.0, tag_dropout=0.0, stale_chain=1.0, stale_chain_lag=3),
    )
    inputs, actions, pad = stale.training_inputs(batch, np.random.default_rng(0))
    texts = stale.decode_reasoning(inputs.reasoning_ids, inputs.reasoning_mask)
    for index, text in enumerate(texts):
        lagged_frame = {
            key.removeprefix("lagged."): batch[key][index]
            for key in batch
            if key.startswith("lagged.")
        }
        lagged_frame = {k: v.numpy() if torch.is_tensor(v) else v for k, v in lagged_frame.items()}
        expected = format_reasoning(Reasoning.from_frame(lagged_frame))
        ids, mask = stale.encode_reasoning([expected])  # truncated as the targets are
        assert text == stale.decode_reasoning(ids, mask)[0]
    assert not inputs.reasoning_loss_rows.any()
    model = VLAModel(CONFIG.replace(action_horizon=2))
    assert "reasoning_loss" not in model.compute_loss(inputs, actions, pad), "context only"

    # stale_chain=0 draws nothing more: the same batch gives the same targets as before
    fresh = make_processor(tokenizer, lagged.observation_spec, ProcessorConfig(image_shift=0))
    base = make_processor(tokenizer, plain.observation_spec, ProcessorConfig(image_shift=0))
    plain_batch = next(iter(DataLoader(plain, batch_size=6, shuffle=False)))
    first, _, _ = fresh.training_inputs(batch, np.random.default_rng(5))
    second, _, _ = base.training_inputs(plain_batch, np.random.default_rng(5))
    assert_identical(first, second)
    assert first.reasoning_loss_rows is None
    with pytest.raises(KeyError, match="reasoning_lag"):
        stale.training_inputs(plain_batch, np.random.default_rng(0))
