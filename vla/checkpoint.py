"""Checkpoint directories: everything needed to deploy a policy, and nothing that unpickles.

Layout (docs: /work/shared/DESIGN.md, "Checkpoint directory"):

    config.json        {"format_version": 1, "model": VLAConfig.to_dict(), "processor": {...},
                        "observation": ObservationSpec.to_dict()}
    model.safetensors  the state dict; tied tensors stored once, their aliases in the metadata
    stats.json         {feature: {stat: nested lists of float64}}
    tokenizer/         tokenizer files (optional)
    train_config.yaml  how the weights were trained (optional, provenance only)

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
"""

from __future__ import annotations

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
from safetensors.torch import load_file, save_file
from torch import nn

from data.features import Feature, observation_spec
from data.schema import DEFAULT_CAMERA_RESOLUTION, ObservationSpec, SpecError, image_key
from vla.config import VLAConfig
from vla.model import VLAModel

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATS_FILE = "stats.json"
TOKENIZER_DIR = "tokenizer"
TRAIN_CONFIG_FILE = "train_config.yaml"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, STATS_FILE)
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
    config_payload = {
        "format_version": FORMAT_VERSION,
        "model": _self_contained_config(model, config).to_dict(),
        "processor": dict(processor or {}),
        OBSERVATION_KEY: observation_spec.to_dict(),
    }
    if reasoning_trained is not None:
        config_payload[REASONING_TRAINED_KEY] = bool(reasoning_trained)
    stats_payload = _stats_to_lists(stats)
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
        _save_weights(staging / WEIGHTS_FILE, model)
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


def _stats_to_lists(stats: Stats) -> dict[str, dict[str, Any]]:
    """Nested float64 lists; Python writes floats in round-trip form, so reloading is exact."""
    payload: dict[str, dict[str, Any]] = {}
    for feature, feature_stats in stats.items():
        payload[str(feature)] = {}
        for name, values in feature_stats.items():
            array = np.asarray(
                values.detach().cpu() if isinstance(values, torch.Tensor) else values,
                dtype=np.float64,
            )
            if not np.isfinite(array).all():
                # NaN/inf are not JSON, and would poison normalization at deployment anyway.
                raise ValueError(f"stats[{feature!r}][{name!r}] has non-finite values")
            payload[str(feature)][str(name)] = array.tolist()
    return payload


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


def _save_weights(path: Path, model: nn.Module) -> None:
    """save_file of the state dict with each tied tensor stored once.

    safetensors refuses tensors that share storage (PaliGemma ties lm_head.weight to
    embed_tokens.weight). Exact aliases (same storage, offset, shape, strides) are stored once
    and recorded in the metadata; any other overlap is copied so it is stored independently.
    """
    tensors, aliases = _deduplicate(model.state_dict())
    save_file(tensors, str(path), metadata={"format": "pt", ALIASES_KEY: json.dumps(aliases)})


def _deduplicate(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors to store, {alias: stored name}); the first name in state-dict order is stored."""
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
    the file at fault and says what was expected. A checkpoint without an observation spec
    (exported before it was recorded) loads with the spec inferred and one logged warning.
    """
    directory = Path(directory)
    _check_layout(directory)
    payload = _read_config_payload(directory / CONFIG_FILE)
    config, processor = _read_config(payload, directory / CONFIG_FILE)
    stats = _read_stats(directory / STATS_FILE)
    train_config = _read_train_config(directory / TRAIN_CONFIG_FILE)
    spec, note = _read_observation_spec(payload, config, directory, train_config)
    if note is not None:
        log.warning(note)
    model = _build_model(config, directory / CONFIG_FILE)
    _load_weights(model, directory / WEIGHTS_FILE)
    model.to(device).eval()
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
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{directory / missing[0]}: missing ({', '.join(missing)} absent); "
            f"a checkpoint directory holds {CONTENTS}"
        )


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
    model, processor = payload.get("model"), payload.get("processor", {})
    if not isinstance(model, dict) or not isinstance(processor, dict):
        raise CheckpointError(f"{path}: 'model' and 'processor' must be JSON objects")
    try:
        config = VLAConfig.from_dict(model)
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: 'model' is not a valid VLAConfig: {error}") from error
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


def _read_stats(path: Path) -> dict[str, dict[str, np.ndarray]]:
    payload = _read_json(path)
    if not isinstance(payload, dict) or not all(isinstance(s, dict) for s in payload.values()):
        raise CheckpointError(f"{path}: expected {{feature: {{stat: list of numbers}}}}")
    try:
        return {
            feature: {name: np.asarray(values, dtype=np.float64) for name, values in stat.items()}
            for feature, stat in payload.items()
        }
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path}: a statistic is not a (nested) list of numbers: {error}"
        ) from error


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


def _build_model(config: VLAConfig, config_path: Path) -> VLAModel:
    """The config must describe a buildable model without downloads; say which file if not."""
    try:
        return VLAModel(config)
    except (KeyError, ValueError, TypeError, OSError) as error:
        raise CheckpointError(
            f"{config_path}: cannot build the model it describes: {error}"
        ) from error


def _load_weights(model: VLAModel, path: Path) -> None:
    """Validate names and shapes against the fresh model, then load strictly."""
    shapes, dtypes, aliases = _read_header(path)
    expected = model.state_dict()
    ties = _model_ties(expected)
    _validate(path, expected, shapes, aliases, ties)
    try:
        stored = load_file(str(path), device="cpu")
    except Exception as error:  # safetensors raises its own error types for damaged data
        raise CheckpointError(
            f"{path}: cannot read tensors ({error}); truncated or corrupt?"
        ) from error
    full = {name: stored[aliases.get(name, name)] for name in shapes.keys() | aliases.keys()}
    for name, group in ties.items():  # a tie the file does not record: load it from its partner
        full.setdefault(name, full[next(n for n in group if n in full)])
    _match_dtypes(model, dtypes)
    model.load_state_dict(full, strict=True)


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

    If every floating tensor was saved in one dtype, the whole model is cast (non-persistent
    buffers such as rotary frequencies included, as `model.to(dtype)` did before saving); any
    remaining difference is fixed per tensor, in place so tied parameters stay tied.
    """
    floating = {dtype for dtype in dtypes.values() if dtype.is_floating_point}
    if len(floating) == 1:
        model.to(floating.pop())
    for name, tensor in model.state_dict(keep_vars=True).items():
        wanted = dtypes.get(name)
        if wanted is not None and tensor.dtype != wanted:
            tensor.data = tensor.data.to(wanted)
