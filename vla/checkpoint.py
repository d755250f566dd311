"""Checkpoint directories: everything needed to deploy a policy, and nothing that unpickles.

Layout (docs: /work/shared/DESIGN.md, "Checkpoint directory"):

    config.json        {"format_version": 1, "model": VLAConfig.to_dict(), "processor": {...},
                        "observation": ObservationSpec.to_dict()}
    model.safetensors  the state dict; tied tensors stored once, their aliases in the metadata
    stats.json         {feature: {stat: nested lists of float64}}
    tokenizer/         tokenizer files (optional; regular files only, no symlinks)
    train_config.yaml  how the weights were trained (optional, provenance only)
    manifest.json      {"format_version": 1, "files": {relative path: {"sha256", "size"}}}

What loading checks, each failure a `CheckpointError` naming the file, the key and what was
expected: every file against manifest.json (a changed byte, a missing or an added file; files
outside the checkpoint's contents, e.g. eval.py's reports under eval/, are not its business);
no symlink or other non-regular entry (a checkpoint must load the same wherever it is copied);
config.json's values against the config dataclasses' types (`vla.config.build_config`: no bool
for an int, no string for a list, "did you mean" for a typo); stats.json by the same check as
the training dataset's (`vla.processor.check_policy_stats`: finite, right sizes, plausible
magnitude, some spread); and the weights: names, shapes, and finite values. Export applies the
same checks to what it is given, before writing anything.

Why this shape: safetensors and JSON cannot execute code when read, so a checkpoint from
anywhere is safe to load; the model config is self-contained (the backbone's HF config is
inlined and `pretrained_path` dropped) so loading never needs the original weights or a
network; and loading checks every tensor name and shape itself, so a mismatch is reported as a
list naming each tensor rather than as the first `load_state_dict` error.

"observation" is the `data.schema.ObservationSpec` the policy was trained with: camera names,
each camera's (height, width) as rendered and stored (not `VLAConfig.image_size`, the model's
internal size), and the state size. Eval, the server and robots read the resolution from it.
Checkpoints exported before it existed still load: the spec is inferred from the training
dataset's info.json (when train_config.yaml's data.path still holds it) or defaulted, one
warning says which, and `record_observation_spec(directory, spec)` writes it in for good.
Checkpoints exported before the manifest load unverified with one warning; `record_manifest`
records the hashes of the files as they are now.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from data.features import Feature, observation_spec
from data.schema import DEFAULT_CAMERA_RESOLUTION, ObservationSpec, SpecError, image_key
from data.stats import StatsError
from vla.config import ConfigError, VLAConfig
from vla.digest import sha256_file
from vla.model import VLAModel
from vla.processor import ProcessorConfig, check_policy_stats
from vla.weights_io import is_finite, read_into

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATS_FILE = "stats.json"
TOKENIZER_DIR = "tokenizer"
TRAIN_CONFIG_FILE = "train_config.yaml"
MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, STATS_FILE)
TOP_LEVEL_FILES = (*REQUIRED_FILES, TRAIN_CONFIG_FILE)  # with tokenizer/: what the manifest covers
CONTENTS = (
    f"{CONFIG_FILE}, {WEIGHTS_FILE}, {STATS_FILE} "
    f"(and optionally {TOKENIZER_DIR}/ and {TRAIN_CONFIG_FILE})"
)
ALIASES_KEY = "aliases"  # safetensors metadata: JSON {alias name: stored name}
OBSERVATION_KEY = "observation"  # config.json: the ObservationSpec the policy was trained with
REASONING_TRAINED_KEY = "reasoning_trained"

Stats = Mapping[str, Mapping[str, Any]]


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message starts with the offending path."""


@dataclass
class LoadedCheckpoint:
    """Everything `load_checkpoint` restores; the model is in eval mode on the requested device.

    `observation_spec_note` is None when config.json records the spec, else the note saying how
    it was inferred for this older checkpoint and how to record it.
    """

    directory: Path
    config: VLAConfig
    model: VLAModel
    stats: dict[str, dict[str, np.ndarray]]
    processor: dict[str, Any]
    observation_spec: ObservationSpec
    tokenizer_dir: Path | None
    train_config: dict[str, Any] | None
    observation_spec_note: str | None = None
    # Whether training showed the model reasoning targets (None: exported before this was
    # recorded; the processor's reasoning_dropout is then all there is to go on).
    reasoning_trained: bool | None = None
    # None when manifest.json verified every file, else the note that it was loaded unverified.
    manifest_note: str | None = None


# ====================================================================================== save
def save_checkpoint(
    directory: Path,
    model: nn.Module,
    config: VLAConfig,
    stats: Stats,
    *,
    processor: Mapping[str, Any] | None = None,
    observation_spec: ObservationSpec | None = None,
    tokenizer_dir: Path | None = None,
    train_config: Mapping[str, Any] | None = None,
    reasoning_trained: bool | None = None,
) -> Path:
    """Write a checkpoint directory atomically and return its path.

    `reasoning_trained`: whether any training sample carried a reasoning target (False for an
    act-only run or a dataset without reasoning labels); a policy refuses to think without it.

    `observation_spec`: the cameras at the resolution the policy was trained on (training
    exports pass the dataset's); without one, the model's cameras are recorded at
    DEFAULT_CAMERA_RESOLUTION and a warning says so.

    The checkpoint is built in a hidden sibling directory and renamed into place only once every
    file is written, so a crash or an exception mid-save never leaves a half-written checkpoint
    at `directory`, and an existing checkpoint there is replaced only by a complete one. A
    non-empty directory that is not a checkpoint is refused rather than replaced.
    """
    directory = Path(directory)
    _refuse_non_checkpoint(directory)
    model = _unwrap(model)
    # Everything that can fail on bad arguments runs before the first file is written.
    if observation_spec is None:
        observation_spec = ObservationSpec.uniform(
            config.cameras, DEFAULT_CAMERA_RESOLUTION, config.state_dim
        )
        log.warning(
            "%s: no observation_spec given; recording cameras %s at the default %dx%d",
            directory, list(config.cameras), *DEFAULT_CAMERA_RESOLUTION,
        )  # fmt: skip
    _check_spec_matches(observation_spec, config, f"{directory}: observation_spec")
    config_path = f"{directory / CONFIG_FILE} (to be written)"
    settings = _processor_config(dict(processor or {}), config_path)
    config_payload = {
        "format_version": FORMAT_VERSION,
        "model": _self_contained_config(model, config).to_dict(),
        "processor": dict(processor or {}),
        OBSERVATION_KEY: observation_spec.to_dict(),
    }
    if reasoning_trained is not None:
        config_payload[REASONING_TRAINED_KEY] = bool(reasoning_trained)
    stats_payload = _stats_to_lists(
        stats, f"{directory / STATS_FILE} (to be written)", config, settings
    )
    tensors, aliases = _deduplicate(model.state_dict())
    _refuse_non_finite(tensors, f"{directory / WEIGHTS_FILE} (to be written)")
    train_text = (
        None if train_config is None else yaml.safe_dump(_plain(train_config), sort_keys=False)
    )
    if tokenizer_dir is not None and not Path(tokenizer_dir).is_dir():
        raise FileNotFoundError(f"{tokenizer_dir}: tokenizer_dir is not a directory")

    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        _write_json(staging / CONFIG_FILE, config_payload)
        _write_json(staging / STATS_FILE, stats_payload)
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, staging / TOKENIZER_DIR)
        if train_text is not None:
            (staging / TRAIN_CONFIG_FILE).write_text(train_text)
        _save_weights(staging / WEIGHTS_FILE, tensors, aliases)
        _write_manifest(staging)
        _move_into_place(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _refuse_non_checkpoint(directory: Path) -> None:
    """Replacing `directory` deletes it, so only an empty one or an old checkpoint may be there."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise FileExistsError(f"{directory}: exists and is not a directory")
    if any(directory.iterdir()) and not (directory / CONFIG_FILE).is_file():
        raise FileExistsError(
            f"{directory}: exists, is not empty and holds no {CONFIG_FILE}; refusing to replace "
            f"something that is not a checkpoint"
        )


def _unwrap(model: nn.Module) -> nn.Module:
    """The module whose state dict keys match a fresh VLAModel (strip DDP and torch.compile)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile wrapper
            model = model._orig_mod
        else:
            return model


def _self_contained_config(model: nn.Module, config: VLAConfig) -> VLAConfig:
    """`config` with the backbone's HF config inlined, so loading needs no `pretrained_path`
    (nor `vision_pretrained`).

    A model built from `pretrained_path` reads its architecture from that directory; the
    checkpoint holds all the weights, so only the architecture is needed, and it is taken from
    the live backbone. Adapters that do not expose `hf_config` keep the config as given.
    """
    if config.vision_pretrained is not None:
        # the checkpoint holds the trained tower: loading needs neither the package nor the file,
        # but the tower must still keep its BatchNorm statistics if training resumes from here
        config = config.replace(
            vision_pretrained=None,
            vision_tower_kwargs={**config.vision_tower_kwargs, "keep_norm_statistics": True},
        )
    hf_config = getattr(getattr(model, "backbone", None), "hf_config", None)
    if hf_config is None:
        return config
    backbone_config = hf_config.to_diff_dict()
    backbone_config.pop("_name_or_path", None)  # the source path: provenance only, never read
    return config.replace(pretrained_path=None, backbone_config=backbone_config)


def _stats_to_lists(
    stats: Stats, source: str, config: VLAConfig, settings: ProcessorConfig
) -> dict[str, dict[str, Any]]:
    """Nested float64 lists, checked as loading will check them; Python writes floats in
    round-trip form, so reloading is exact."""
    plain = {
        feature: {
            name: values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
            for name, values in feature_stats.items()
        }
        for feature, feature_stats in stats.items()
    }
    checked = _checked_stats(plain, source, config, settings)
    return {
        feature: {str(name): array.tolist() for name, array in feature_stats.items()}
        for feature, feature_stats in checked.items()
    }


def _checked_stats(
    stats: Any, source: str, config: VLAConfig, settings: ProcessorConfig
) -> dict[str, dict[str, np.ndarray]]:
    try:
        return check_policy_stats(stats, source, config, settings)
    except StatsError as error:
        raise CheckpointError(str(error)) from None


def _processor_config(processor: Any, source: str) -> ProcessorConfig:
    """config.json's "processor", type-checked like the model config."""
    if not isinstance(processor, dict):
        raise CheckpointError(f"{source}: 'processor' must be a JSON object")
    try:
        return ProcessorConfig.from_dict(processor, where="processor.")
    except ConfigError as error:
        raise CheckpointError(f"{source}: {error}") from None


def _refuse_non_finite(tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """NaN or inf in a weight is corruption or a diverged run: it would serve garbage."""
    _refuse_non_finite_names(
        [name for name, tensor in tensors.items() if not is_finite(tensor)], source
    )


def _refuse_non_finite_names(bad: list[str], source: str) -> None:
    if bad:
        raise CheckpointError(
            f"{source}: non-finite values (NaN or inf) in {len(bad)} tensor(s): "
            f"{', '.join(sorted(bad)[:5])}{' ...' if len(bad) > 5 else ''}; the weights are "
            "corrupt or training diverged: export from a training checkpoint with finite weights"
        )


def _plain(value: Any) -> Any:
    """Containers, paths, enums and numpy scalars as plain YAML-safe data."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Enum):
        return _plain(value.value)
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    return value


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")


def _save_weights(path: Path, tensors: Mapping[str, torch.Tensor], aliases: dict[str, str]) -> None:
    """save_file of the deduplicated state dict (`_deduplicate`), aliases in the metadata."""
    save_file(tensors, str(path), metadata={"format": "pt", ALIASES_KEY: json.dumps(aliases)})


def _deduplicate(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors to store, {alias: stored name}); the first name in state-dict order is stored.

    safetensors refuses tensors that share storage (PaliGemma ties lm_head.weight to
    embed_tokens.weight). Exact aliases (same storage, offset, shape, strides) are stored once
    and recorded in the metadata; any other overlap is copied so it is stored independently.
    """
    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple, str] = {}
    storages: set[tuple[torch.device, int]] = set()
    for name, tensor in state.items():
        tensor = tensor.detach()
        if tensor.numel() == 0:
            stored[name] = tensor.clone()
            continue
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        view = (*storage, tensor.storage_offset(), tensor.shape, tensor.stride(), tensor.dtype)
        if view in views:
            aliases[name] = views[view]
            continue
        views[view] = name
        shared = storage in storages or not tensor.is_contiguous()
        storages.add(storage)
        stored[name] = tensor.clone(memory_format=torch.contiguous_format) if shared else tensor
    return stored, aliases


def _move_into_place(staging: Path, directory: Path) -> None:
    """Rename the finished checkpoint over `directory`, keeping the old one until that succeeds.

    POSIX cannot swap two directories atomically, so the old checkpoint is first renamed aside;
    should the process die between the two renames, it is still complete under that name.
    """
    if not directory.exists():
        staging.rename(directory)
        return
    previous = directory.parent / f".{directory.name}.previous-{uuid.uuid4().hex[:8]}"
    directory.rename(previous)
    try:
        staging.rename(directory)
    except BaseException:
        previous.rename(directory)
        raise
    shutil.rmtree(previous, ignore_errors=True)


# ====================================================================================== load
def load_checkpoint(directory: Path, device: str = "cpu") -> LoadedCheckpoint:
    """Rebuild the model from config.json and load its weights strictly, in their saved dtype.

    Every problem found is raised as a `CheckpointError` whose message starts with the path of
    the file at fault and says what was expected (the module docstring lists the checks). A
    checkpoint without an observation spec or a manifest (exported before they were recorded)
    loads with one logged warning for each, saying how to record it.
    """
    directory = Path(directory)
    _check_layout(directory)
    manifest_note = verify_manifest(directory)
    if manifest_note is not None:
        log.warning(manifest_note)
    payload = _read_config_payload(directory / CONFIG_FILE)
    config, processor = _read_config(payload, directory / CONFIG_FILE)
    settings = _processor_config(processor, str(directory / CONFIG_FILE))
    stats = _read_stats(directory / STATS_FILE, config, settings)
    train_config = _read_train_config(directory / TRAIN_CONFIG_FILE)
    spec, note = _read_observation_spec(payload, config, directory, train_config)
    if note is not None:
        log.warning(note)
    weights = directory / WEIGHTS_FILE
    model = _build_model(config, directory / CONFIG_FILE, device, _stored_dtype(weights))
    _load_weights(model, weights)
    model.eval()
    tokenizer_dir = directory / TOKENIZER_DIR
    return LoadedCheckpoint(
        directory=directory,
        config=config,
        model=model,
        stats=stats,
        processor=processor,
        observation_spec=spec,
        tokenizer_dir=tokenizer_dir if tokenizer_dir.is_dir() else None,
        train_config=train_config,
        observation_spec_note=note,
        reasoning_trained=_read_reasoning_trained(payload, directory / CONFIG_FILE),
        manifest_note=manifest_note,
    )


def _read_reasoning_trained(payload: Mapping[str, Any], path: Path) -> bool | None:
    value = payload.get(REASONING_TRAINED_KEY)
    if value is not None and not isinstance(value, bool):
        raise CheckpointError(
            f"{path}: {REASONING_TRAINED_KEY!r} must be true or false, got {value!r}"
        )
    return value


def _check_layout(directory: Path) -> None:
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory; a checkpoint holds {CONTENTS}")
    _content_files(directory)  # no symlinks, nothing but regular files and directories
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{directory / missing[0]}: missing ({', '.join(missing)} absent); "
            f"a checkpoint directory holds {CONTENTS}"
        )


# ====================================================================================== manifest
def _content_files(directory: Path) -> dict[str, Path]:
    """{posix path relative to `directory`: path} of the checkpoint's files: the top-level
    files it defines and everything under tokenizer/. Anything else in the directory (eval.py's
    reports under eval/, a README) is not part of the checkpoint and is neither hashed nor read.

    A symlink, or anything that is not a regular file or directory, is refused: a checkpoint must
    be self-contained, so that a copy of it loads the same, and a tokenizer/ symlinked to another
    tokenizer is someone else's tokenizer.
    """
    files: dict[str, Path] = {}
    for name in TOP_LEVEL_FILES:
        path = directory / name
        if os.path.lexists(path):
            _check_regular(path, directory, want_directory=False)
            files[name] = path
    tokenizer = directory / TOKENIZER_DIR
    if not os.path.lexists(tokenizer):
        return files
    _check_regular(tokenizer, directory, want_directory=True)
    for root, subdirectories, names in os.walk(tokenizer):
        for name in sorted(subdirectories):
            _check_regular(Path(root) / name, directory, want_directory=True)
        for name in sorted(names):
            path = Path(root) / name
            _check_regular(path, directory, want_directory=False)
            files[path.relative_to(directory).as_posix()] = path
    return files


def _check_regular(path: Path, directory: Path, want_directory: bool) -> None:
    if path.is_symlink():
        raise CheckpointError(
            f"{path}: a symlink (to {os.readlink(path)}); a checkpoint holds regular files only, "
            f"so that it loads the same wherever it is copied: replace the link with a copy of "
            f"what it points to, or re-export the checkpoint"
        )
    kind = "directory" if want_directory else "regular file"
    if not (path.is_dir() if want_directory else path.is_file()):
        raise CheckpointError(f"{path}: expected a {kind} of the checkpoint")
    if not path.resolve().is_relative_to(directory.resolve()):
        raise CheckpointError(f"{path}: resolves to {path.resolve()}, outside {directory}")


def _write_manifest(directory: Path) -> Path:
    """manifest.json of the files as they are now, written atomically."""
    files = {
        name: {"sha256": sha256_file(path), "size": path.stat().st_size}
        for name, path in sorted(_content_files(directory).items())
    }
    path = directory / MANIFEST_FILE
    partial = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    _write_json(partial, {"format_version": MANIFEST_VERSION, "files": files})
    os.replace(partial, path)
    return path


def record_manifest(directory: Path | str) -> Path:
    """Record the content hashes of an existing checkpoint (one exported before manifests, or
    one edited on purpose); returns the manifest's path.

    This blesses the files as they are: run it on a copy you trust (e.g. just exported or
    copied from the training machine and compared), since a corrupted file would be recorded too.
    """
    directory = Path(directory)
    _check_layout(directory)
    return _write_manifest(directory)


def verify_manifest(directory: Path) -> str | None:
    """Check every file of the checkpoint against manifest.json: None when all match, the note
    to log for a checkpoint without one; a CheckpointError naming the file otherwise."""
    path = directory / MANIFEST_FILE
    files = _content_files(directory)
    if not os.path.lexists(path):
        return (
            f"{directory}: no {MANIFEST_FILE} (exported before checkpoints recorded content "
            f"hashes), so its files are loaded unverified. Once you trust this copy, record "
            f"them with `vla verify --checkpoint {directory} --record-manifest` (or "
            f"record_manifest('{directory}') from vla.checkpoint)"
        )
    _check_regular(path, directory, want_directory=False)
    recorded = _read_manifest(path)
    for name, entry in recorded.items():
        file = directory / name
        if name not in files:
            raise CheckpointError(
                f"{file}: missing; {path} lists it (sha256 {entry['sha256']}): the checkpoint "
                f"is incomplete (a partial copy?). Copy it again from where it was exported"
            )
        actual = sha256_file(file)
        if actual != entry["sha256"]:
            raise CheckpointError(
                f"{file}: content does not match {path}: expected sha256 {entry['sha256']} "
                f"({entry['size']} bytes), found {actual} ({file.stat().st_size} bytes). The file "
                f"changed after export (disk or transfer corruption, an edit): copy the checkpoint "
                f"again from where it was exported, or re-export it"
            )
    extra = sorted(files.keys() - recorded.keys())
    if extra:
        raise CheckpointError(
            f"{directory / extra[0]}: not in {path} (added after export"
            f"{f'; also {extra[1:]}' if extra[1:] else ''}); it would change what loads. Remove "
            f"it, or if the change is deliberate, record it with vla.checkpoint.record_manifest"
        )
    return None


def _read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    payload = _read_json(path)
    files = payload.get("files") if isinstance(payload, dict) else None
    if (
        not isinstance(payload, dict)
        or payload.get("format_version") != MANIFEST_VERSION
        or not isinstance(files, dict)
        or not all(
            isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str)
            and isinstance(entry.get("size"), int)
            for entry in files.values()
        )
    ):
        raise CheckpointError(
            f'{path}: expected {{"format_version": {MANIFEST_VERSION}, "files": '
            f'{{path: {{"sha256": hex digest, "size": bytes}}}}}}'
        )
    return files


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from error


def _read_config_payload(path: Path) -> dict[str, Any]:
    payload = _read_json(path)
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(payload).__name__}")
    version = payload.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise CheckpointError(
            f"{path}: format_version {version!r} is not supported; this code reads "
            f"{list(SUPPORTED_FORMAT_VERSIONS)}"
        )
    return payload


def _read_config(payload: Mapping[str, Any], path: Path) -> tuple[VLAConfig, dict[str, Any]]:
    """The model config, every value type-checked (errors: "<path>: model.<key>: expected ...")."""
    model, processor = payload.get("model"), payload.get("processor", {})
    if not isinstance(model, dict) or not isinstance(processor, dict):
        raise CheckpointError(f"{path}: 'model' and 'processor' must be JSON objects")
    try:
        config = VLAConfig.from_dict(model, where="model.")
    except ConfigError as error:
        raise CheckpointError(f"{path}: {error}") from None
    return config, processor


# ====================================================================================== observation spec
def _read_observation_spec(
    payload: Mapping[str, Any],
    config: VLAConfig,
    directory: Path,
    train_config: Mapping[str, Any] | None,
) -> tuple[ObservationSpec, str | None]:
    """(the spec, None) from config.json; for an older checkpoint without one, (the inferred
    spec, the note saying how it was inferred and how to record it)."""
    path = directory / CONFIG_FILE
    where = f"{path}: '{OBSERVATION_KEY}'"
    if OBSERVATION_KEY in payload:
        try:
            spec = ObservationSpec.from_dict(payload[OBSERVATION_KEY], source=where)
        except SpecError as error:
            raise CheckpointError(str(error)) from None
        _check_spec_matches(spec, config, where)
        return spec, None
    spec, how = infer_observation_spec(config, train_config)
    height, width = spec.cameras[0].height, spec.cameras[0].width
    uniform = all((c.height, c.width) == (height, width) for c in spec.cameras)
    fix = (
        f'python -c "from vla.checkpoint import record_observation_spec; '
        f"record_observation_spec('{directory}', resolution=({height}, {width}))\""
        if uniform
        else f"vla.checkpoint.record_observation_spec('{directory}', spec)"
    )
    cameras = ", ".join(f"{c.name} {c.height}x{c.width}" for c in spec.cameras)
    note = (
        f"{path} has no '{OBSERVATION_KEY}' entry (exported before camera specs were recorded); "
        f"camera resolution {how}: {cameras}. Record the resolution the policy was trained on "
        f"(edit the numbers if these are wrong) with: {fix}"
    )
    return spec, note


def infer_observation_spec(
    config: VLAConfig, train_config: Mapping[str, Any] | None
) -> tuple[ObservationSpec, str]:
    """The observation spec of an older checkpoint, and how it was found: from the training
    dataset's meta/info.json when train_config's data.path still holds one, else the default."""
    data = (train_config or {}).get("data")
    data_path = data.get("path") if isinstance(data, Mapping) else None
    reason = "train_config.yaml names no data.path"
    if data_path:
        info = Path(str(data_path)) / "meta" / "info.json"
        reason = f"{info} is not readable here"
        if info.is_file():
            try:
                features = json.loads(info.read_text())["features"]
                parsed = {
                    key: Feature.from_json(key, spec, str(info)) for key, spec in features.items()
                }
                spec = observation_spec(parsed, config.cameras, source=str(info))
                _check_spec_matches(spec, config, str(info))
                return spec, f"inferred from the training dataset's {info}"
            except (KeyError, ValueError, TypeError) as error:
                reason = f"{info} does not describe the model's cameras ({error})"
    height, width = DEFAULT_CAMERA_RESOLUTION
    spec = ObservationSpec.uniform(config.cameras, DEFAULT_CAMERA_RESOLUTION, config.state_dim)
    return spec, f"defaulted to {height}x{width} ({reason})"


def record_observation_spec(
    directory: Path | str,
    spec: ObservationSpec | None = None,
    *,
    resolution: tuple[int, int] | None = None,
) -> ObservationSpec:
    """Write an observation spec into an existing checkpoint's config.json (the fix for one
    exported before specs were recorded); returns what was written.

    `spec` is written as given; `resolution` (height, width) records every model camera at that
    size; with neither, the inferred spec is recorded. config.json is replaced atomically.
    """
    directory = Path(directory)
    _check_layout(directory)
    has_manifest = verify_manifest(directory) is None  # never re-record a damaged file
    path = directory / CONFIG_FILE
    payload = _read_config_payload(path)
    config, _ = _read_config(payload, path)
    if spec is None and resolution is not None:
        spec = ObservationSpec.uniform(config.cameras, tuple(resolution), config.state_dim)
    if spec is None:
        spec, _ = infer_observation_spec(config, _read_train_config(directory / TRAIN_CONFIG_FILE))
    _check_spec_matches(spec, config, f"{path}: the spec to record")
    payload[OBSERVATION_KEY] = spec.to_dict()
    partial = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    _write_json(partial, payload)
    os.replace(partial, path)
    if has_manifest:
        _write_manifest(directory)
    return spec


def _check_spec_matches(spec: ObservationSpec, config: VLAConfig, where: str) -> None:
    """The spec must describe the cameras and state the model was built for."""
    if spec.camera_names != tuple(config.cameras):
        raise CheckpointError(
            f"{where}: cameras {list(spec.camera_names)} do not match the model's "
            f"{list(config.cameras)} (keys {[image_key(c) for c in config.cameras]})"
        )
    if spec.state_dim != config.state_dim:
        raise CheckpointError(
            f"{where}: state_dim {spec.state_dim} does not match the model's {config.state_dim}"
        )


def _read_stats(
    path: Path, config: VLAConfig, settings: ProcessorConfig
) -> dict[str, dict[str, np.ndarray]]:
    """stats.json checked as strictly as at export (and as the training dataset's)."""
    payload = _read_json(path)
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected {{feature: {{stat: list of numbers}}}}")
    return _checked_stats(payload, str(path), config, settings)


def _read_train_config(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        payload = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise CheckpointError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a mapping, found {type(payload).__name__}")
    return payload


def _build_model(
    config: VLAConfig, config_path: Path, device: str = "cpu", dtype: torch.dtype | None = None
) -> VLAModel:
    """The config must describe a buildable model without downloads; say which file if not.

    Built directly on `device` in the weights' `dtype` (an fp32 CPU copy first would need twice
    the memory of bf16 weights, 13 GB for the pi0-size config), and without random
    initialization: every stored tensor is overwritten by the file and the load is strict, so
    drawing 3B random numbers first (most of a pi0-size load's time) would be thrown away.
    Non-persistent buffers (rotary frequencies) are computed, not initialized, so they stay."""
    try:
        with _skipped_initialization():
            return VLAModel.build(config, device, dtype)
    except (KeyError, ValueError, TypeError, OSError) as error:
        raise CheckpointError(
            f"{config_path}: cannot build the model it describes: {error}"
        ) from error


def _skipped_initialization() -> contextlib.AbstractContextManager[None]:
    """transformers' no_init_weights (torch.nn.init and HF's init_weights become no-ops); it
    moved from modeling_utils (4.x) to initialization (5.x). Without it, loading is only slower."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def _stored_dtype(path: Path) -> torch.dtype | None:
    """The one floating dtype of every stored tensor, or None when they differ."""
    _, dtypes, _ = _read_header(path)
    floating = {dtype for dtype in dtypes.values() if dtype.is_floating_point}
    return floating.pop() if len(floating) == 1 else None


def _load_weights(model: VLAModel, path: Path) -> None:
    """Validate names and shapes against the fresh model, then read the file's tensors straight
    into it (`vla.weights_io.read_into`): the peak is the model itself, with no memory map of the
    file and no second copy of any weight."""
    shapes, dtypes, aliases = _read_header(path)
    ties = _model_ties(model.state_dict())
    _validate(path, model.state_dict(), shapes, aliases, ties)
    _match_dtypes(model, dtypes)
    stored_names = shapes.keys() | aliases.keys()  # a tie the file does not record shares storage
    # {name in the file: the model's tensor}; a tied partner is filled through its tie
    targets = {
        aliases.get(name, name): target
        for name, target in model.state_dict().items()
        if name in stored_names
    }
    non_finite: list[str] = []

    def check(name: str, tensor: torch.Tensor) -> None:
        if not is_finite(tensor):
            non_finite.append(name)

    try:
        read_into(path, targets, on_tensor=check)
    except (OSError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"{path}: cannot read tensors ({error}); truncated or corrupt?"
        ) from error
    _refuse_non_finite_names(non_finite, str(path))


def _read_header(
    path: Path,
) -> tuple[dict[str, tuple[int, ...]], dict[str, torch.dtype], dict[str, str]]:
    """Names, shapes and dtypes from the safetensors header alone (no tensor data is read)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            shapes, dtypes = {}, {}
            for name in handle.keys():
                shapes[name] = tuple(handle.get_slice(name).get_shape())
                dtypes[name] = handle.get_slice(name).get_dtype()
    except Exception as error:  # SafetensorError for a bad header or a truncated buffer
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({error}); truncated or corrupt?"
        ) from error
    try:
        aliases = json.loads(metadata.get(ALIASES_KEY, "{}"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: metadata '{ALIASES_KEY}' is not JSON ({error})") from error
    return shapes, {name: _torch_dtype(path, dtype) for name, dtype in dtypes.items()}, aliases


def _torch_dtype(path: Path, name: str) -> torch.dtype:
    """safetensors names dtypes like 'F32' / 'BF16'; map them to torch dtypes."""
    table = {
        "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
        "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
        "U8": torch.uint8, "BOOL": torch.bool,
    }  # fmt: skip
    if name not in table:
        raise CheckpointError(f"{path}: unsupported tensor dtype {name}")
    return table[name]


def _model_ties(state: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """{name: the other names of the same tensor} for tensors the model itself ties."""
    groups: dict[tuple, list[str]] = {}
    for name, tensor in state.items():
        if tensor.numel():
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.shape)
            groups.setdefault(key, []).append(name)
    return {
        name: [other for other in group if other != name]
        for group in groups.values()
        if len(group) > 1
        for name in group
    }


def _validate(
    path: Path,
    expected: Mapping[str, torch.Tensor],
    shapes: Mapping[str, tuple[int, ...]],
    aliases: Mapping[str, str],
    ties: Mapping[str, list[str]],
) -> None:
    """One error listing every missing, unexpected and mis-shaped tensor, with both shapes."""
    broken = {alias: target for alias, target in aliases.items() if target not in shapes}
    found = {name: shapes[name] for name in shapes}
    found.update(
        {alias: shapes[target] for alias, target in aliases.items() if alias not in broken}
    )
    problems = [
        f"  alias {alias} -> {target}: the target is not in the file"
        for alias, target in broken.items()
    ]
    for name, tensor in expected.items():
        if name in found:
            if found[name] != tuple(tensor.shape):
                problems.append(
                    f"  shape mismatch {name}: expected {list(tensor.shape)}, found {list(found[name])}"
                )
        elif not any(other in found for other in ties.get(name, ())):
            problems.append(f"  missing {name}: expected shape {list(tensor.shape)}")
    for name in found.keys() - expected.keys():
        problems.append(f"  unexpected {name}: found shape {list(found[name])}, not in the model")
    if problems:
        raise CheckpointError(
            f"{path}: tensors do not match the model described by {CONFIG_FILE} "
            f"({len(problems)} problem(s)):\n" + "\n".join(sorted(problems))
        )


def _match_dtypes(model: nn.Module, dtypes: Mapping[str, torch.dtype]) -> None:
    """Give the model the dtypes of the file, since load_state_dict would cast to the model's.

    If every floating tensor was saved in one dtype, the whole model is cast (a no-op when it was
    built in that dtype; the rotary frequencies stay float32 either way, `backbone.Fp32Rotary`);
    any remaining difference is fixed per tensor, in place so tied parameters stay tied.
    """
    floating = {dtype for dtype in dtypes.values() if dtype.is_floating_point}
    if len(floating) == 1:
        model.to(floating.pop())
    for name, tensor in model.state_dict(keep_vars=True).items():
        wanted = dtypes.get(name)
        if wanted is not None and tensor.dtype != wanted:
            tensor.data = tensor.data.to(wanted)
