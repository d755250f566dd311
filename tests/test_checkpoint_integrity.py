"""Checkpoints that refuse to be wrong: a manifest of content hashes checked at load, weights
and stats checked for finite, plausible values, config.json and the processor settings
type-checked, and a tokenizer that must live inside the checkpoint. Every refusal is a
`CheckpointError` naming the file, the key and what was expected."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TASKS, dataset_stats, rewrite_safetensors

import vla.checkpoint as checkpoint
from vla.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vla.config import VLAConfig
from vla.model import VLAModel


@pytest.fixture
def copy(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A copy of the tiny checkpoint (as training exports one) that a test may damage."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_error(directory: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(directory)
    return str(info.value)


def as_legacy(directory: Path) -> Path:
    """What this code exported before manifests existed: the same files, no manifest.json.
    Tests of the value checks edit a file and go through this, so the check that fires is the
    value check and not the digest mismatch (which has its own tests)."""
    (directory / "manifest.json").unlink(missing_ok=True)
    return directory


def edit_json(directory: Path, name: str, edit: Callable[[dict], None]) -> Path:
    path = directory / name
    payload = json.loads(path.read_text())
    edit(payload)
    path.write_text(json.dumps(payload))  # NaN and Infinity are written as JSON allows them
    as_legacy(directory)
    return path


def flip_bit_in_tensor_data(path: Path) -> None:
    """Flip one bit in the middle of the tensor data (past the safetensors JSON header)."""
    data = bytearray(path.read_bytes())
    header = struct.unpack("<Q", data[:8])[0]
    position = 8 + header + (len(data) - 8 - header) // 2
    data[position] ^= 0x10
    path.write_bytes(bytes(data))


# ====================================================================================== manifest
def test_export_writes_a_manifest_of_every_file(copy: Path) -> None:
    manifest = json.loads((copy / "manifest.json").read_text())
    files = {
        path.relative_to(copy).as_posix(): path
        for path in copy.rglob("*")
        if path.is_file() and path.name != "manifest.json"
    }
    assert {"config.json", "model.safetensors", "stats.json", "tokenizer/tokenizer.json"} <= set(
        files
    )
    assert set(manifest["files"]) == set(files)
    for name, path in files.items():
        assert manifest["files"][name] == {"sha256": sha256(path), "size": path.stat().st_size}


def test_flipped_bit_in_the_weights_is_refused_naming_file_and_digests(copy: Path) -> None:
    path = copy / "model.safetensors"
    expected = sha256(path)
    flip_bit_in_tensor_data(path)
    message = load_error(copy)
    assert message.startswith(str(path))
    assert f"expected sha256 {expected}" in message and f"found {sha256(path)}" in message


def test_a_file_missing_from_the_checkpoint_is_refused(copy: Path) -> None:
    missing = next(p for p in sorted((copy / "tokenizer").iterdir()) if p.name != "tokenizer.json")
    missing.unlink()
    message = load_error(copy)
    assert message.startswith(str(missing)) and "missing" in message
    assert str(copy / "manifest.json") in message


def test_an_extra_file_in_the_checkpoint_is_refused(copy: Path) -> None:
    extra = copy / "tokenizer" / "added_tokens.json"
    extra.write_text('{"<act>": 600}')
    message = load_error(copy)
    assert message.startswith(str(extra)) and "not in" in message
    assert str(copy / "manifest.json") in message


def test_files_beside_the_checkpoint_contents_are_ignored(copy: Path) -> None:
    """eval.py writes its reports to <checkpoint>/eval/ by default: that must not break loading."""
    (copy / "eval" / "quickstart").mkdir(parents=True)
    (copy / "eval" / "quickstart" / "report.json").write_text("{}")
    assert load_checkpoint(copy).config.action_horizon == 8


def test_checkpoint_without_a_manifest_loads_with_one_note_and_can_be_given_one(
    copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    as_legacy(copy)
    with caplog.at_level(logging.WARNING, logger="vla.checkpoint"):
        load_checkpoint(copy)
    notes = [record.getMessage() for record in caplog.records]
    assert len(notes) == 1, notes
    assert "manifest.json" in notes[0] and f"record_manifest('{copy}')" in notes[0]

    checkpoint.record_manifest(copy)  # the fix the note names
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vla.checkpoint"):
        load_checkpoint(copy)
    assert not caplog.records
    flip_bit_in_tensor_data(copy / "model.safetensors")
    assert load_error(copy).startswith(str(copy / "model.safetensors"))


def test_vla_verify_reports_a_sound_checkpoint_and_names_a_damaged_file(
    copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vla.cli import main as vla_main

    assert vla_main(["verify", "--checkpoint", str(copy)]) == 0
    assert "valid (every file matches manifest.json" in capsys.readouterr().out
    flip_bit_in_tensor_data(copy / "model.safetensors")
    assert vla_main(["verify", "--checkpoint", str(copy)]) == 1
    assert f"invalid: {copy / 'model.safetensors'}" in capsys.readouterr().err
    as_legacy(copy)  # a copy the user decided to trust as it is
    assert vla_main(["verify", "--checkpoint", str(copy), "--record-manifest"]) == 0
    assert (copy / "manifest.json").is_file()
    assert vla_main(["verify", "--checkpoint", str(copy)]) == 0


# ====================================================================================== weights
def rewrite_weights(directory: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    rewrite_safetensors(directory / "model.safetensors", edit)
    as_legacy(directory)


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_non_finite_weight_is_refused_naming_the_tensor(copy: Path, value: float) -> None:
    name = "expert.layers.0.mlp.down_proj.weight"
    rewrite_weights(copy, lambda tensors: tensors[name].view(-1).__setitem__(5, value))
    message = load_error(copy)
    assert message.startswith(str(copy / "model.safetensors"))
    assert name in message and "non-finite" in message


def test_non_finite_weights_are_refused_at_export(tmp_path: Path) -> None:
    config = VLAConfig.named("tiny", action_horizon=8)
    model = VLAModel(config)
    with torch.no_grad():
        model.expert.layers[0].mlp.down_proj.weight[0, 0] = math.nan
    with pytest.raises(CheckpointError, match=r"expert\.layers\.0\.mlp\.down_proj\.weight"):
        save_checkpoint(tmp_path / "ckpt", model, config, dataset_stats())
    assert list(tmp_path.iterdir()) == []


# ====================================================================================== stats
def set_stat(feature: str, stat: str, value: object) -> Callable[[dict], None]:
    def edit(stats: dict) -> None:
        stats[feature][stat] = value(stats[feature][stat]) if callable(value) else value

    return edit


def first(new: float) -> Callable[[list], list]:
    return lambda values: [new, *values[1:]]


@pytest.mark.parametrize(
    ("edit", "feature", "stat", "expected"),
    [
        (set_stat("action", "mean", first(math.nan)), "action", "mean", "non-finite"),
        (set_stat("action", "q99", first(math.inf)), "action", "q99", "non-finite"),
        (set_stat("observation.state", "std", first(-math.inf)), "observation.state", "std", "non-finite"),
        (set_stat("action", "std", lambda v: v[:6]), "action", "std", "7 values"),
        (set_stat("observation.state", "mean", lambda v: v + [0.0]), "observation.state", "mean", "8 values"),
        (set_stat("action", "std", first(1e30)), "action", "std", "1e+06"),
        (set_stat("action", "max", first(-1e3)), "action", "max", "min"),
        (set_stat("action", "std", lambda v: [0.0] * len(v)), "action", "std", "spread"),
        (set_stat("action", "std", first(-0.5)), "action", "std", ">= 0"),
        (set_stat("action", "mean", "zero"), "action", "mean", "numbers"),
        (lambda stats: stats.pop("action"), "action", None, "no statistics"),
        (lambda stats: stats["action"].pop("q01"), "action", "q01", "missing"),
    ],
    ids=[
        "nan", "inf", "minus-inf", "short", "long", "std-1e30", "max-below-min", "no-spread",
        "negative-std", "not-numbers", "no-action", "quantile-mode-without-q01",
    ],
)  # fmt: skip
def test_bad_stats_are_refused_naming_the_file_feature_and_stat(
    copy: Path, edit: Callable[[dict], None], feature: str, stat: str | None, expected: str
) -> None:
    path = edit_json(copy, "stats.json", edit)
    message = load_error(copy)
    assert message.startswith(str(path)), message
    assert repr(feature) in message and expected in message, message
    assert stat is None or repr(stat) in message, message


def test_bad_stats_are_refused_at_export(tmp_path: Path) -> None:
    config = VLAConfig.named("tiny", action_horizon=8)
    stats = dataset_stats()
    stats["action"]["std"] = np.full(7, 1e30)
    with pytest.raises(CheckpointError, match=r"stats\['action'\]\['std'\].*1e\+06"):
        save_checkpoint(tmp_path / "ckpt", VLAModel(config), config, stats)
    assert list(tmp_path.iterdir()) == []


# ====================================================================================== config.json
@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("model", "action_horizon", True, "expected int, got True"),
        ("model", "action_horizon", 8.0, "expected int, got 8.0"),
        ("model", "cameras", "agentview", "expected a list, got 'agentview'"),
        ("model", "cameras", ["agentview", 3], "expected str, got 3"),
        ("model", "flow_time_beta", [1.5], "expected 2 values"),
        ("model", "backbone_config", "paligemma", "expected a mapping"),
        ("model", "action_horizon", 0, "action_horizon must be >= 1"),
        ("processor", "image_shift", "2", "expected int, got '2'"),
        ("processor", "reasoning_dropout", 1.5, "probability in [0, 1]"),
        ("processor", "action_norm", "mean-std", "did you mean 'mean_std'"),
        ("processor", "action_nrom", "quantile", "did you mean 'processor.action_norm'"),
        ("model", "action_horizn", 8, "did you mean 'model.action_horizon'"),
    ],
)
def test_bad_config_values_are_refused_naming_config_json_and_the_key(
    copy: Path, section: str, key: str, value: object, expected: str
) -> None:
    path = edit_json(copy, "config.json", lambda payload: payload[section].update({key: value}))
    message = load_error(copy)
    assert message.startswith(f"{path}: {section}"), message
    assert key in message and expected in message, message


# ====================================================================================== tokenizer
def other_tokenizer(directory: Path) -> Path:
    from vla.tokenizer import train_tokenizer

    train_tokenizer(["a completely different corpus"] * 3, vocab_size=300).save_pretrained(
        directory
    )
    return directory


def test_tokenizer_directory_symlinked_elsewhere_is_refused(copy: Path, tmp_path: Path) -> None:
    elsewhere = other_tokenizer(tmp_path / "elsewhere")
    shutil.rmtree(copy / "tokenizer")
    (copy / "tokenizer").symlink_to(elsewhere, target_is_directory=True)
    as_legacy(copy)
    message = load_error(copy)
    assert message.startswith(str(copy / "tokenizer")) and "symlink" in message
    assert str(elsewhere) in message


def test_tokenizer_file_symlinked_elsewhere_is_refused(copy: Path, tmp_path: Path) -> None:
    elsewhere = other_tokenizer(tmp_path / "elsewhere") / "tokenizer.json"
    (copy / "tokenizer" / "tokenizer.json").unlink()
    (copy / "tokenizer" / "tokenizer.json").symlink_to(elsewhere)
    message = load_error(copy)
    assert message.startswith(str(copy / "tokenizer" / "tokenizer.json"))
    assert "symlink" in message and str(elsewhere) in message


def test_the_intact_checkpoint_still_serves(copy: Path) -> None:
    """The checks refuse the broken, not the sound: the exported tiny checkpoint serves actions."""
    from conftest import observation

    from vla.policy import VLAPolicy

    policy = VLAPolicy.from_pretrained(copy)
    out = policy.infer([observation(0, task=TASKS[0], size=64)])
    assert out["actions"].shape == (1, 8, 7) and np.isfinite(out["actions"]).all()
