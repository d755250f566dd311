"""Helpers shared by the benchmark scripts: a machine description, a timer, a memory high-water
mark, and dataset samples as policy observations."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def high_water_gib() -> float:
    """This process's peak resident memory (Linux VmHWM), in GiB. Unlike `ru_maxrss`, which a
    child forked from a large parent inherits, it covers this process's own memory only."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 2**20


def rate(work: Callable[[], int], min_seconds: float = 3.0) -> float:
    """Items per second of `work` (which returns how many items it processed), over >= min_seconds."""
    work()  # warm-up: imports, caches, worker start-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        done += work()
    return done / (time.perf_counter() - start)


def median_seconds(function: Callable[[], Any], repeats: int, device: str = "cpu") -> float:
    """Median seconds of `function()` over `repeats` runs after one warm-up, synchronizing CUDA
    around each run so a GPU's asynchronous kernels are counted."""
    import statistics

    import torch

    function()
    samples = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def observation_from_sample(sample: Mapping[str, Any], cameras: Sequence[str]) -> dict[str, Any]:
    """An `ActionChunkDataset` sample as the observation a policy is sent: the cameras' images
    (H x W x 3 uint8, already an observation's layout), the state and the task, as numpy."""
    from data.schema import STATE_KEY, TASK_KEY, image_key

    keys = (*map(image_key, cameras), STATE_KEY, TASK_KEY)
    return {
        key: sample[key].numpy() if hasattr(sample[key], "numpy") else sample[key] for key in keys
    }
