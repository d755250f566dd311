"""The one-shot GPU check: everything worth measuring in a short, rare GPU window, in one go.

The GPU machine is lent for ~15 minutes, bare and offline, so this script must run there
unattended from a fresh checkout (`bash scripts/gpu_check.sh`) and leave one results file
whatever fails: every stage is timed, its exceptions are caught and recorded, and the file is
rewritten after each stage, so a run cut short still reports what it measured.

Stages (`--cpu-smoke` runs the same stages on the CPU with the tiny config only, which is how CI
keeps this script from rotting):
  environment  torch/CUDA versions, the device, its memory
  gpu_tests    the `gpu`-marked tests (pytest subprocess)
  latency      chunk latency per config at batch 1 and 8, 2 views, horizon 50, 10 flow steps:
               eager without and with the prefix KV cache, and the fast paths (static, compile,
               and on CUDA graph and compile-graph), each with its deviation from eager
  train_step   one bf16 (fp32 on CPU) training step: seconds, samples/s, MFU on known GPUs
  ddp          two-process DDP, when the machine has two or more GPUs

    python scripts/gpu_check.py [--cpu-smoke] [--out DIR]   # DIR default: $OUT or outputs/gpu_check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import median_seconds  # noqa: E402

from vla.config import VLAConfig  # noqa: E402
from vla.fast_path import FastSampler  # noqa: E402
from vla.model import ModelInputs, VLAModel  # noqa: E402

RESULTS_FILE = "gpu_check.json"
# Dense bf16 peak of GPUs the check may meet, for MFU (vendor datasheets, FLOP/s).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny config on the CPU")
    parser.add_argument(
        "--out", type=Path, help="results folder (default: $OUT or outputs/gpu_check)"
    )
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    out = args.out or Path(os.environ.get("OUT") or REPO / "outputs" / "gpu_check")
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.cpu_smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device is visible; run with --cpu-smoke on a CPU", file=sys.stderr)
        return 2
    configs = ["tiny"] if args.cpu_smoke else ["tiny", "pi0"]
    repeats = 2 if args.cpu_smoke else args.repeats
    results: dict[str, Any] = {"mode": "cpu-smoke" if args.cpu_smoke else "gpu", "stages": {}}
    path = out / RESULTS_FILE

    def stage(name: str, work: Callable[[], Any]) -> None:
        started = time.perf_counter()
        print(f"==> {name}", flush=True)
        try:
            entry = {"status": "ok", "result": work()}
        except Exception as error:  # recorded; the next stage still runs
            entry = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
            entry["traceback"] = traceback.format_exc(limit=8)
            print(entry["traceback"], file=sys.stderr)
        entry["seconds"] = round(time.perf_counter() - started, 2)
        results["stages"][name] = entry
        path.write_text(json.dumps(results, indent=2, default=str) + "\n")  # after every stage

    stage("environment", lambda: environment(device))
    stage("gpu_tests", gpu_tests)
    for config in configs:
        stage(f"latency_{config}", lambda config=config: latency(config, device, repeats))
    stage(f"train_step_{configs[-1]}", lambda: train_step(configs[-1], device, repeats))
    stage("ddp", lambda: ddp(device))
    failed = [name for name, entry in results["stages"].items() if entry["status"] != "ok"]
    print(f"results: {path}" + (f"; failed stages: {failed}" if failed else ""))
    return 1 if failed else 0


# ====================================================================================== stages
def environment(device: str) -> dict[str, Any]:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        info.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1))
    return info


def gpu_tests() -> dict[str, Any]:
    """The `gpu`-marked tests (only the files that hold them: the others import the simulator,
    which the GPU machine lacks)."""
    files = ["tests/test_model.py", "tests/test_checkpoint.py", "tests/test_fast_path.py"]
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    return {"exit_code": done.returncode, "summary": summary, "tail": done.stdout[-2000:]}


def build(config_name: str, device: str, dtype: torch.dtype, **overrides: Any) -> VLAModel:
    """The named config's model, random weights, built directly on `device` in `dtype`."""
    torch.manual_seed(0)
    return VLAModel.build(VLAConfig.named(config_name, **overrides), device, dtype)


def inputs_for(config: VLAConfig, batch: int, device: str, dtype: torch.dtype) -> ModelInputs:
    fake = ModelInputs.fake(
        config, batch=batch, text_lengths=tuple(12 + i % 5 for i in range(batch))
    )
    return ModelInputs(
        images={camera: pixels.to(device, dtype) for camera, pixels in fake.images.items()},
        text_ids=fake.text_ids.to(device),
        text_mask=fake.text_mask.to(device),
        state=fake.state.to(device, dtype),
    )


def timed_ms(work: Callable[[], Any], repeats: int, device: str) -> float:
    """Median milliseconds of `work()` over `repeats` runs after one warm-up."""
    return round(median_seconds(work, repeats, device) * 1e3, 3)


def latency(config_name: str, device: str, repeats: int) -> dict[str, Any]:
    """Chunk latency with 2 views, horizon 50, 10 flow steps, at batch 1 and 8: the eager
    reference without and with the prefix KV cache, and every fast path (vla/fast_path.py) with
    its largest deviation from eager on the same inputs and noise."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = build(config_name, device, dtype, action_horizon=50, num_inference_steps=10).eval()
    config = model.config
    rows: dict[str, Any] = {
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "dtype": str(dtype).removeprefix("torch."),
        "cameras": list(config.cameras),
    }
    # one sampler per mode for the whole stage: graphs are captured per batch size, and the
    # compiled step is compiled once per shape
    graph_modes = ("graph", "compile-graph") if device == "cuda" else ()
    samplers = {mode: FastSampler(model, mode) for mode in ("static", *graph_modes)}
    compiled = FastSampler(model, "compile") if not graph_modes else samplers["compile-graph"]
    for batch in (1, 8):
        inputs = inputs_for(config, batch, device, dtype)
        noise = torch.randn(batch, 50, config.action_dim, device=device, dtype=dtype)
        row = chunk_latency(model, inputs, noise, repeats, device)
        with torch.no_grad():
            eager = model.sample_actions(inputs, noise=noise)
        fast = {mode: sampler.sample for mode, sampler in samplers.items()}
        fast["compile"] = compiled._chunk  # the compiled step without a graph around it
        for mode, sample in fast.items():
            started = time.perf_counter()
            with torch.no_grad():
                first = sample(inputs, noise)  # capture / compilation happen here
            row[f"{mode}_first_call_s"] = round(time.perf_counter() - started, 2)
            row[f"{mode}_ms"] = timed_ms(
                lambda s=sample, x=inputs, n=noise: s(x, n), repeats, device
            )
            row[f"{mode}_max_abs_diff_vs_eager"] = float((first - eager).abs().max())
        best = min(row[f"{mode}_ms"] for mode in fast)
        row["fastest_ms"] = best
        row["speedup_vs_kv_cache"] = round(row["kv_cache_ms"] / best, 2)
        rows[f"batch_{batch}"] = row
    return rows


@torch.no_grad()
def chunk_latency(
    model: VLAModel, inputs: ModelInputs, noise: torch.Tensor, repeats: int, device: str
) -> dict[str, float]:
    """Milliseconds of one eager chunk without and with the prefix KV cache, and of the prefix."""
    return {
        "eager_no_cache_ms": timed_ms(
            lambda: model.sample_actions(inputs, noise=noise, use_cache=False), repeats, device
        ),
        "kv_cache_ms": timed_ms(lambda: model.sample_actions(inputs, noise=noise), repeats, device),
        "prefix_ms": timed_ms(lambda: model.encode_prefix(inputs), repeats, device),
    }


def train_step(config_name: str, device: str, repeats: int) -> dict[str, Any]:
    """One optimizer step of a batch of 8 (bf16 weights on a GPU); MFU from 6·N·tokens."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    overrides = {"activation_checkpointing": True} if config_name == "pi0" else {}
    model = build(config_name, device, dtype, **overrides).train()
    batch = 8
    inputs = inputs_for(model.config, batch, device, dtype)
    actions = torch.randn(
        batch, model.config.action_horizon, model.config.action_dim, device=device, dtype=dtype
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=device == "cuda")

    def step() -> None:
        loss = model.compute_loss(inputs, actions)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = timed_ms(step, max(1, repeats // 2), device) / 1e3
    parameters = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        prefix, _, _ = model.embed_prefix(inputs)
    tokens = batch * (prefix.shape[1] + model.config.action_horizon + 1)
    flops = 6 * parameters * tokens / seconds
    peak = next(
        (value for name, value in PEAK_BF16_FLOPS.items() if device == "cuda"
         and name in torch.cuda.get_device_name(0)),
        None,
    )  # fmt: skip
    result = {
        "config": config_name,
        "batch": batch,
        "seconds": round(seconds, 4),
        "samples_per_s": round(batch / seconds, 2),
        "achieved_tflops": round(flops / 1e12, 2),
        "mfu": None if peak is None else round(flops / peak, 4),
    }
    if device == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def ddp(device: str) -> dict[str, Any]:
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    if gpus < 2:
        return {"skipped": f"{gpus} GPU(s): two-process DDP needs two"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["tests/test_training_distributed.py"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    return {"exit_code": done.returncode, "tail": done.stdout[-1500:]}


if __name__ == "__main__":
    sys.exit(main())
