"""Reading safetensors files into existing tensors (vla/weights_io.py), and what a checkpoint
load costs in memory: one copy of the weights, where the memory-mapped path took three."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import vla.weights_io as weights_io
from data.stats import compute_stats
from vla.checkpoint import save_checkpoint
from vla.config import PI0_PALIGEMMA, VLAConfig
from vla.model import VLAModel
from vla.weights_io import WeightsFileError, is_finite, read_into

ROOT = Path(__file__).resolve().parents[1]


def stored_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "bf16": torch.randn(33, 7, generator=generator).bfloat16(),
        "fp32": torch.randn(5, 3, 2, generator=generator),
        "int64": torch.arange(11),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "bool": torch.tensor([True, False, True]),
    }


def test_read_into_fills_every_target_exactly(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(stored_tensors(), str(path))
    expected = load_file(str(path))
    targets = {name: torch.full_like(tensor, 7) for name, tensor in expected.items()}
    seen: list[str] = []
    read_into(path, targets, on_tensor=lambda name, tensor: seen.append(name))
    for name, tensor in expected.items():
        assert targets[name].dtype == tensor.dtype and torch.equal(targets[name], tensor), name
    assert sorted(seen) == sorted(expected)


def test_read_into_non_contiguous_and_parameter_targets(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(stored_tensors(), str(path))
    parameter = torch.nn.Parameter(torch.zeros(5, 3, 2))
    transposed = torch.zeros(7, 33, dtype=torch.bfloat16).t()  # (33, 7), not contiguous
    read_into(path, {"fp32": parameter, "bf16": transposed})
    assert torch.equal(parameter.detach(), stored_tensors()["fp32"])
    assert torch.equal(transposed, stored_tensors()["bf16"])


def test_a_target_of_the_wrong_size_is_named(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(stored_tensors(), str(path))
    with pytest.raises(
        WeightsFileError,
        match=r"tensor fp32 holds 120 bytes; .*float64 tensor it is read into needs 240",
    ):
        read_into(path, {"fp32": torch.zeros(5, 3, 2, dtype=torch.float64)})


def test_a_truncated_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(stored_tensors(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-40])
    targets = {name: torch.empty_like(tensor) for name, tensor in stored_tensors().items()}
    with pytest.raises(
        WeightsFileError, match=r"w.safetensors: tensor \w+ occupies .*-byte file \(truncated\?\)"
    ):
        read_into(path, targets)


def test_is_finite_finds_a_nan_in_any_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights_io, "FINITE_CHECK_ELEMENTS", 16)
    tensor = torch.zeros(10, 10, dtype=torch.bfloat16)
    assert is_finite(tensor)
    for index in (0, 47, 99):
        broken = tensor.clone()
        broken.view(-1)[index] = float("inf") if index % 2 else float("nan")
        assert not is_finite(broken), index
    assert is_finite(torch.zeros(0)) and is_finite(torch.arange(3))


# Run from the repository root, in a fresh process (benchmarks/common.high_water_gib: VmHWM).
LOAD_PEAK = """
import sys
sys.path.insert(0, "benchmarks")
from common import high_water_gib
from vla.checkpoint import load_checkpoint
before = high_water_gib()
load_checkpoint(sys.argv[1])
print(before, high_water_gib())
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for VmHWM")
def test_loading_a_checkpoint_costs_one_copy_of_its_weights(tmp_path: Path) -> None:
    """A pi0-shaped bf16 model (2 decoder layers, 2 SigLIP layers, a 65k vocabulary: ~0.5 GiB)
    loads in a fresh process with its high-water mark rising by at most 1.3x the weight file.
    Through safetensors' memory map it rose by 2.7x (0.92 -> 3.08 GiB for 0.79 GiB, e706c5a)."""
    backbone = copy.deepcopy(PI0_PALIGEMMA)
    backbone["vision_config"]["num_hidden_layers"] = 2
    backbone["text_config"].update(num_hidden_layers=2, vocab_size=65536)
    config = VLAConfig.named("pi0", backbone_config=backbone)
    model = VLAModel.build(config, "cpu", torch.bfloat16).eval()
    rng = np.random.default_rng(0)
    stats = compute_stats(
        {"observation.state": rng.normal(size=(50, 8)), "action": rng.uniform(-1, 1, (50, 7))}
    )
    directory = save_checkpoint(tmp_path / "pi0-2layer", model, config, stats)
    del model
    weights_gib = (directory / "model.safetensors").stat().st_size / 2**30
    done = subprocess.run(
        [sys.executable, "-c", LOAD_PEAK, str(directory)],
        capture_output=True, text=True, cwd=ROOT, check=True,
    )  # fmt: skip
    before, after = map(float, done.stdout.split()[-2:])
    print(f"weights {weights_gib:.2f} GiB; load high-water {before:.2f} -> {after:.2f} GiB")
    assert after - before <= 1.3 * weights_gib
