"""Read a safetensors file straight into a model's existing tensors, one `readinto` each.

Why not `safe_open(...).get_tensor`: it reads through a memory map and returns a new tensor, so
loading a pi0-size checkpoint (6 GiB of bf16) held the model, every mapped page it had touched
(which count as resident until the map closes) and a copy of each tensor: the load of a 0.79 GiB
pi0-shaped checkpoint raised the process's peak by 2.16 GiB (tests/test_weights_io.py, on
e706c5a), and the full pi0 load peaked at 14.7 GiB (benchmarks/pi0_cpu.py). Reading each tensor's
bytes from the file into the tensor that will hold it costs nothing beyond the model.

The format (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length, a
JSON header {name: {"dtype", "shape", "data_offsets": [begin, end]}} with offsets relative to
the end of the header, then the raw little-endian tensor bytes. Names, shapes and dtypes are
validated by the caller (vla.checkpoint reads the header with safetensors itself); this module
checks only what it relies on: each tensor's byte range lies inside the file and has the size
its target needs.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch

# isfinite runs on at most this many elements at a time (a 16 MiB temporary of bools)
FINITE_CHECK_ELEMENTS = 1 << 24


class WeightsFileError(ValueError):
    """The file's byte layout does not fit the tensors it is read into; the message says which."""


def tensor_ranges(path: Path) -> dict[str, tuple[int, int]]:
    """{name: (first byte, end byte)} of every tensor, as absolute file offsets."""
    with open(path, "rb") as handle:
        (header_size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_size))
    base = 8 + header_size
    return {
        name: (base + entry["data_offsets"][0], base + entry["data_offsets"][1])
        for name, entry in header.items()
        if name != "__metadata__"
    }


def read_into(
    path: Path,
    targets: Mapping[str, torch.Tensor],
    on_tensor: Callable[[str, torch.Tensor], None] | None = None,
) -> None:
    """Fill each target with the stored tensor of the same name (the target's dtype and shape
    must be the stored ones), in file order; `on_tensor(name, values)` runs after each is read,
    with the values on the CPU (the target itself, or the buffer they were read into).

    CPU targets are read into directly; other devices through one CPU buffer per tensor."""
    if sys.byteorder != "little":  # the bytes are little-endian; a big-endian host must convert
        raise WeightsFileError(f"{path}: reading in place needs a little-endian host")
    ranges = tensor_ranges(path)
    size = Path(path).stat().st_size
    order = sorted(targets, key=lambda name: ranges[name][0])
    with open(path, "rb", buffering=0) as handle:
        for name in order:
            begin, end = ranges[name]
            target = targets[name]
            wanted = target.numel() * target.element_size()
            if end > size:
                raise WeightsFileError(
                    f"{path}: tensor {name} occupies bytes {begin}..{end} of a {size}-byte file "
                    f"(truncated?)"
                )
            if end - begin != wanted:
                raise WeightsFileError(
                    f"{path}: tensor {name} holds {end - begin} bytes; the {list(target.shape)} "
                    f"{target.dtype} tensor it is read into needs {wanted}"
                )
            staging = target
            if target.device.type != "cpu" or not target.is_contiguous():
                staging = torch.empty(target.shape, dtype=target.dtype)
            handle.seek(begin)
            view = memoryview(staging.detach().view(-1).view(torch.uint8).numpy())
            while view.nbytes:
                count = handle.readinto(view)
                if not count:
                    raise WeightsFileError(f"{path}: ended inside tensor {name} (truncated?)")
                view = view[count:]
            if staging is not target:
                with torch.no_grad():
                    target.copy_(staging)
            if on_tensor is not None:
                on_tensor(name, staging)


def is_finite(tensor: torch.Tensor) -> bool:
    """Whether every element is finite, checked in slices so the temporary stays small."""
    if not tensor.is_floating_point():
        return True
    return all(bool(torch.isfinite(part).all()) for part in _slices(tensor.reshape(-1)))


def _slices(flat: torch.Tensor) -> Iterator[torch.Tensor]:
    for start in range(0, flat.numel(), FINITE_CHECK_ELEMENTS):
        yield flat[start : start + FINITE_CHECK_ELEMENTS]
