"""Checkpoint directories: an exact round trip (tied weights included), no pickle anywhere,
self-contained configs, atomic saves, and load errors that name the tensor and the file."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fake_inputs, rewrite_safetensors
from safetensors import safe_open

import vla.checkpoint as checkpoint
from data.schema import CameraSpec, ObservationSpec
from data.stats import compute_stats
from vla.checkpoint import (
    CheckpointError,
    LoadedCheckpoint,
    load_checkpoint,
    record_manifest,
    record_observation_spec,
    save_checkpoint,
)
from vla.config import TINY_PALIGEMMA, VLAConfig
from vla.model import VLAModel

TIED = ("backbone.embed_tokens.weight", "backbone.lm_head.weight")
PROCESSOR = {"state_norm": "mean_std", "action_norm": "quantile", "image_shift": 2}
# Two denoising steps and a batch of two keep sampling fast on shared CPUs; exactness is per step.
TINY = {"num_inference_steps": 2}
TRAIN_CONFIG = {"lr": 2.5e-5, "steps": 3, "dataset": {"root": "data/libero", "cameras": ["a"]}}
# Not square and not the default, so a swapped or defaulted resolution shows.
SPEC = ObservationSpec((CameraSpec("agentview", 96, 128), CameraSpec("wrist", 96, 128)), 8)


@pytest.fixture(scope="module")
def model() -> VLAModel:
    torch.manual_seed(0)
    return VLAModel(VLAConfig.named("tiny", **TINY)).eval()


@pytest.fixture(scope="module")
def stats() -> dict[str, dict[str, list[float]]]:
    rng = np.random.default_rng(0)
    return compute_stats(
        {"observation.state": rng.normal(size=(50, 8)), "action": rng.uniform(-1, 1, (50, 7))}
    )


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tokenizer_src")
    (directory / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0}}}')
    (directory / "sub").mkdir()
    (directory / "sub" / "special_tokens_map.json").write_text("{}")
    return directory


@pytest.fixture(scope="module")
def saved(
    model: VLAModel, stats: dict, tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """One complete checkpoint, written once; tests that damage it work on a copy."""
    return save_checkpoint(
        tmp_path_factory.mktemp("saved") / "ckpt",
        model,
        model.config,
        stats,
        processor=PROCESSOR,
        observation_spec=SPEC,
        tokenizer_dir=tokenizer_dir,
        train_config=TRAIN_CONFIG,
    )


@pytest.fixture(scope="module")
def loaded(saved: Path) -> LoadedCheckpoint:
    return load_checkpoint(saved)


@pytest.fixture
def copy(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "copy"))


def sample(model: VLAModel) -> torch.Tensor:
    inputs = fake_inputs(model.config, batch=2, text_lengths=(10, 5))
    noise = torch.randn(
        2, model.config.action_horizon, 7, generator=torch.Generator().manual_seed(1)
    )
    return model.sample_actions(inputs, noise=noise)


def rewrite_weights(directory: Path, edit) -> None:
    """Apply `edit` to the stored tensors of a checkpoint, keeping its metadata; the manifest
    is re-recorded, so what fails is the check under test, not the content hash (that one has
    its tests in test_checkpoint_integrity.py)."""
    rewrite_safetensors(directory / "model.safetensors", edit)
    record_manifest(directory)


def rewrite_config(directory: Path, edit) -> None:
    """Apply `edit` to config.json's payload and re-record the manifest."""
    path = directory / "config.json"
    payload = json.loads(path.read_text())
    edit(payload)
    path.write_text(json.dumps(payload))
    record_manifest(directory)


def load_error(directory: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(directory)
    return str(info.value)


# ====================================================================================== round trip
def test_round_trip_gives_identical_actions(model: VLAModel, loaded: LoadedCheckpoint) -> None:
    assert not loaded.model.training
    assert torch.equal(sample(model), sample(loaded.model))


def test_round_trip_gives_identical_state_dicts_with_ties_kept(
    model: VLAModel, loaded: LoadedCheckpoint
) -> None:
    original, restored = model.state_dict(), loaded.model.state_dict()
    assert original.keys() == restored.keys()
    for name, tensor in original.items():
        assert restored[name].dtype == tensor.dtype, name
        assert torch.equal(restored[name], tensor), name
    embed, head = (restored[name] for name in TIED)
    assert embed.data_ptr() == head.data_ptr(), "lm_head must stay tied to embed_tokens"


def test_tied_tensor_is_stored_once_and_recorded_as_alias(saved: Path) -> None:
    with safe_open(str(saved / "model.safetensors"), framework="pt") as handle:
        names, metadata = set(handle.keys()), handle.metadata()
    assert TIED[0] in names and TIED[1] not in names
    assert json.loads(metadata["aliases"]) == {TIED[1]: TIED[0]}


def test_stats_processor_tokenizer_and_train_config_round_trip(
    stats: dict, tokenizer_dir: Path, loaded: LoadedCheckpoint, saved: Path
) -> None:
    assert loaded.stats.keys() == stats.keys()
    for feature, feature_stats in stats.items():
        for name, values in feature_stats.items():
            restored = loaded.stats[feature][name]
            assert restored.dtype == np.float64
            assert np.array_equal(restored, np.asarray(values, dtype=np.float64)), (feature, name)
    assert loaded.processor == PROCESSOR
    assert loaded.train_config == TRAIN_CONFIG
    assert loaded.tokenizer_dir == saved / "tokenizer"
    for source in tokenizer_dir.rglob("*"):
        copied = loaded.tokenizer_dir / source.relative_to(tokenizer_dir)
        assert copied.exists() and (source.is_dir() or copied.read_bytes() == source.read_bytes())


def test_a_trained_position_embedding_round_trips(stats: dict, tmp_path: Path) -> None:
    """The timm tower's per-cell position embedding is a learned tensor of the checkpoint, and
    config.json brings it back: a reload with a changed embedding acts as the saved model does."""
    torch.manual_seed(0)
    config = VLAConfig.named("tiny-timm", vision_position_embedding=True, **TINY)
    model = VLAModel(config).eval()
    position = model.backbone.timm_tower.position_embedding
    with torch.no_grad():
        position.add_(torch.randn_like(position))  # as training would move it off its init
    loaded = load_checkpoint(save_checkpoint(tmp_path / "pos", model, config, stats))
    assert loaded.model.config.vision_position_embedding
    restored = loaded.model.backbone.timm_tower.position_embedding
    assert torch.equal(restored, position)
    assert torch.equal(sample(model), sample(loaded.model))


def test_a_position_embedding_on_siglip_is_refused() -> None:
    with pytest.raises(ValueError, match="vision_position_embedding is for a timm"):
        VLAConfig.named("tiny", vision_position_embedding=True)


def test_optional_parts_are_optional(model: VLAModel, stats: dict, tmp_path: Path) -> None:
    loaded = load_checkpoint(save_checkpoint(tmp_path / "bare", model, model.config, stats))
    assert loaded.tokenizer_dir is None and loaded.train_config is None
    assert loaded.processor == {}
    assert sorted(p.name for p in (tmp_path / "bare").iterdir()) == [
        "config.json",
        "manifest.json",
        "model.safetensors",
        "stats.json",
    ]


def test_nothing_pickled(saved: Path) -> None:
    pickled = [p for p in saved.rglob("*") if p.suffix in {".pt", ".pth", ".pkl", ".bin", ".ckpt"}]
    assert pickled == []
    config = json.loads((saved / "config.json").read_text())
    assert config["format_version"] == 1 and config["processor"] == PROCESSOR


def test_dtype_is_kept(model: VLAModel, stats: dict, tmp_path: Path) -> None:
    half = VLAModel(model.config)
    half.load_state_dict(model.state_dict())
    half.to(torch.bfloat16)
    loaded = load_checkpoint(save_checkpoint(tmp_path / "bf16", half, half.config, stats))
    for name, tensor in half.state_dict().items():
        restored = loaded.model.state_dict()[name]
        assert restored.dtype == tensor.dtype == torch.bfloat16, name
        assert torch.equal(restored, tensor), name


def test_bf16_round_trip_gives_identical_actions_however_the_model_was_made(
    model: VLAModel, stats: dict, tmp_path: Path
) -> None:
    """A bf16 checkpoint loads by building in bf16, which keeps the rotary frequencies float32;
    `model.to(bf16)` used to cast them, so a model trained that way and its reload disagreed
    (benchmarks/pi0_cpu.py --save-load: not bit-identical on e706c5a). Both ways of making a bf16 model must reload to the same actions."""
    cast = VLAModel(model.config)
    cast.load_state_dict(model.state_dict())
    cast.to(torch.bfloat16).eval()
    torch.manual_seed(0)
    built = VLAModel.build(model.config, "cpu", torch.bfloat16).eval()
    for name, made in (("cast", cast), ("built", built)):
        frequencies = made.backbone.rotary_emb.inner.inv_freq
        assert frequencies.dtype == torch.float32, name
        inputs = fake_inputs(made.config, batch=2, text_lengths=(10, 5))
        inputs.images = {camera: pixels.bfloat16() for camera, pixels in inputs.images.items()}
        inputs.state = inputs.state.bfloat16()
        noise = torch.randn(2, made.config.action_horizon, 7, dtype=torch.bfloat16)
        loaded = load_checkpoint(save_checkpoint(tmp_path / name, made, made.config, stats)).model
        with torch.no_grad():
            assert torch.equal(
                made.sample_actions(inputs, noise=noise), loaded.sample_actions(inputs, noise=noise)
            ), name


def test_pretrained_backbone_loads_without_its_path(stats: dict, tmp_path: Path) -> None:
    """The checkpoint inlines the HF config: the pretrained directory can be gone when loading."""
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    torch.manual_seed(3)
    pretrained = tmp_path / "paligemma"
    PaliGemmaForConditionalGeneration(PaliGemmaConfig(**TINY_PALIGEMMA)).save_pretrained(pretrained)
    config = VLAConfig.named("tiny", backbone_config={}, pretrained_path=str(pretrained), **TINY)
    model = VLAModel(config).eval()
    directory = save_checkpoint(tmp_path / "ckpt", model, config, stats)
    shutil.rmtree(pretrained)

    loaded = load_checkpoint(directory)
    assert loaded.config.pretrained_path is None
    assert loaded.config.backbone_config["text_config"]["hidden_size"] == 128
    assert torch.equal(sample(model), sample(loaded.model))


@pytest.mark.gpu
def test_device_moves_the_model(model: VLAModel, saved: Path) -> None:
    loaded = load_checkpoint(saved, device="cuda")
    assert all(p.device.type == "cuda" for p in loaded.model.parameters())


# ====================================================================================== observation spec
def test_observation_spec_is_saved_in_config_json_and_restored(
    loaded: LoadedCheckpoint, saved: Path
) -> None:
    assert json.loads((saved / "config.json").read_text())["observation"] == SPEC.to_dict()
    assert loaded.observation_spec == SPEC and loaded.observation_spec_note is None


def drop_observation_spec(directory: Path) -> dict:
    """Make `directory` what this code exported before specs were recorded (with a manifest of
    the edited files: checkpoints without one are test_checkpoint_integrity.py's subject)."""
    path = directory / "config.json"
    payload = json.loads(path.read_text())
    del payload["observation"]
    path.write_text(json.dumps(payload, indent=2))
    record_manifest(directory)
    return payload


def legacy_load(directory: Path, caplog: pytest.LogCaptureFixture) -> tuple[LoadedCheckpoint, str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vla.checkpoint"):
        loaded = load_checkpoint(directory)
    notes = [record.getMessage() for record in caplog.records]
    assert len(notes) == 1, notes
    return loaded, notes[0]


def test_older_checkpoint_loads_with_a_defaulted_spec_and_says_how_to_fix_it(
    copy: Path, model: VLAModel, caplog: pytest.LogCaptureFixture
) -> None:
    legacy = drop_observation_spec(copy)
    loaded, note = legacy_load(copy, caplog)
    assert loaded.observation_spec == ObservationSpec.uniform(("agentview", "wrist"), (128, 128))
    assert loaded.observation_spec_note == note
    assert "no 'observation' entry" in note and "defaulted to 128x128" in note
    assert f"record_observation_spec('{copy}', resolution=(128, 128))" in note
    assert torch.equal(sample(model), sample(loaded.model)), "the weights load as before"

    assert record_observation_spec(copy, resolution=(96, 128)) == SPEC  # the fix the note names
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vla.checkpoint"):
        fixed = load_checkpoint(copy)
    assert fixed.observation_spec == SPEC and not caplog.records
    payload = json.loads((copy / "config.json").read_text())
    assert payload == {**legacy, "observation": SPEC.to_dict()}, "nothing else was changed"


def test_older_checkpoint_infers_the_resolution_from_its_training_dataset(
    copy: Path, write_dataset, caplog: pytest.LogCaptureFixture
) -> None:
    root, _ = write_dataset(lengths=(2,), image_size=(24, 32))
    (copy / "train_config.yaml").write_text(f"data:\n  path: {root}\n")
    drop_observation_spec(copy)
    loaded, note = legacy_load(copy, caplog)
    assert loaded.observation_spec == ObservationSpec.uniform(("agentview", "wrist"), (24, 32))
    assert f"inferred from the training dataset's {root / 'meta' / 'info.json'}" in note
    assert "resolution=(24, 32)" in note


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda spec: spec["cameras"][0].update(height=0),
            r"config\.json: 'observation': cameras\[0\]: .*height must be a positive int",
        ),
        (
            lambda spec: spec.update(cameras=spec["cameras"][:1]),
            r"config\.json: 'observation': cameras \['agentview'\] do not match the model's",
        ),
        (lambda spec: spec.update(state_dim=9), r"'observation': state_dim 9 does not match"),
    ],
)
def test_bad_observation_spec_names_the_file_and_key(copy: Path, edit, message) -> None:
    rewrite_config(copy, lambda payload: edit(payload["observation"]))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(copy)


def test_processor_from_checkpoint_serves_the_saved_spec(
    model: VLAModel, stats: dict, tmp_path: Path
) -> None:
    from vla.processor import Processor, ProcessorConfig
    from vla.tokenizer import train_tokenizer

    train_tokenizer(["task"], vocab_size=512).save_pretrained(tmp_path / "tokenizer")
    directory = save_checkpoint(
        tmp_path / "ckpt",
        model,
        model.config,
        stats,
        processor=ProcessorConfig().to_dict(),
        observation_spec=SPEC,
        tokenizer_dir=tmp_path / "tokenizer",
    )
    processor = Processor.from_checkpoint(load_checkpoint(directory))
    assert processor.observation_spec == SPEC
    rng = np.random.default_rng(0)
    observation = {
        "observation.images.agentview": rng.integers(0, 256, (96, 96, 3), dtype=np.uint8),
        "observation.images.wrist": rng.integers(0, 256, (96, 128, 3), dtype=np.uint8),
        "observation.state": np.zeros(8, np.float32),
        "task": "task",
    }
    with pytest.raises(
        ValueError, match=r"agentview: got images of shape \(96, 96, 3\).*\(96, 128, 3\)"
    ):
        processor.inputs([observation])


# ====================================================================================== errors
def test_missing_tensor_is_named(copy: Path) -> None:
    name = "expert.layers.0.mlp.down_proj.weight"
    rewrite_weights(copy, lambda tensors: tensors.pop(name))
    message = load_error(copy)
    assert message.startswith(str(copy / "model.safetensors"))
    assert f"missing {name}: expected shape [64, 128]" in message


def test_unexpected_tensor_is_named(copy: Path) -> None:
    rewrite_weights(copy, lambda tensors: tensors.update({"extra.weight": torch.zeros(2, 3)}))
    message = load_error(copy)
    assert message.startswith(str(copy / "model.safetensors"))
    assert "unexpected extra.weight: found shape [2, 3]" in message


def test_misshaped_tensor_is_named_with_both_shapes(copy: Path) -> None:
    name = "backbone.projector.linear.weight"
    rewrite_weights(copy, lambda tensors: tensors.update({name: tensors[name][:, :10].clone()}))
    message = load_error(copy)
    assert message.startswith(str(copy / "model.safetensors"))
    assert f"shape mismatch {name}: expected [128, 64], found [128, 10]" in message


def test_all_problems_are_listed_at_once(copy: Path) -> None:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors.pop("expert.layers.0.mlp.down_proj.weight")
        tensors["extra.weight"] = torch.zeros(1)
        tensors[TIED[0]] = torch.zeros(3, 128)  # the alias lm_head is mis-shaped with it

    rewrite_weights(copy, edit)
    message = load_error(copy)
    assert "4 problem(s)" in message
    assert f"shape mismatch {TIED[1]}: expected [512, 128], found [3, 128]" in message


def test_truncated_weights(copy: Path) -> None:
    path = copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    record_manifest(copy)
    message = load_error(copy)
    assert message.startswith(str(path)) and "truncated or corrupt" in message


def test_missing_stats(copy: Path) -> None:
    (copy / "stats.json").unlink()
    message = load_error(copy)
    assert message.startswith(str(copy / "stats.json"))
    assert "config.json, model.safetensors, stats.json" in message


def test_invalid_config_json(copy: Path) -> None:
    (copy / "config.json").write_text('{"format_version": 1, "model": ')
    record_manifest(copy)
    message = load_error(copy)
    assert message.startswith(str(copy / "config.json")) and "not valid JSON" in message


def test_unknown_format_version(copy: Path) -> None:
    rewrite_config(copy, lambda config: config.update(format_version=99))
    message = load_error(copy)
    assert message.startswith(str(copy / "config.json")) and "format_version 99" in message


def test_unknown_config_key(copy: Path) -> None:
    rewrite_config(copy, lambda config: config["model"].update(action_horizn=4))
    message = load_error(copy)
    assert message.startswith(str(copy / "config.json")) and "action_horizon" in message


# ====================================================================================== atomic save
def test_interrupted_save_keeps_the_previous_checkpoint(
    model: VLAModel, stats: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = save_checkpoint(tmp_path / "ckpt", model, model.config, stats)
    before = {p.name: p.read_bytes() for p in directory.iterdir()}

    def crash(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", crash)
    other = VLAModel(model.config)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(directory, other, other.config, stats, train_config={"new": True})

    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"], "no staging directory may remain"
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before


def test_interrupted_first_save_leaves_nothing(
    model: VLAModel, stats: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoint, "save_file", lambda *args, **kwargs: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        save_checkpoint(tmp_path / "ckpt", model, model.config, stats)
    assert list(tmp_path.iterdir()) == []


def test_save_replaces_an_existing_checkpoint(
    model: VLAModel, stats: dict, tmp_path: Path, tokenizer_dir: Path
) -> None:
    directory = save_checkpoint(
        tmp_path / "ckpt", model, model.config, stats, tokenizer_dir=tokenizer_dir
    )
    other = {key: {name: np.asarray(v) * 2 for name, v in s.items()} for key, s in stats.items()}
    save_checkpoint(directory, model, model.config, other)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert not (directory / "tokenizer").exists(), "nothing of the old checkpoint may linger"
    restored = load_checkpoint(directory).stats
    assert np.array_equal(restored["action"]["mean"], other["action"]["mean"])


def test_save_refuses_to_replace_a_directory_that_is_not_a_checkpoint(
    model: VLAModel, stats: dict, tmp_path: Path
) -> None:
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "important.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a checkpoint"):
        save_checkpoint(tmp_path / "outputs", model, model.config, stats)
    assert (tmp_path / "outputs" / "important.txt").read_text() == "keep me"


def test_non_finite_stats_are_refused_before_writing(model: VLAModel, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"stats\['action'\]\['std'\]"):
        save_checkpoint(tmp_path / "ckpt", model, model.config, {"action": {"std": [np.nan]}})
    assert list(tmp_path.iterdir()) == []
