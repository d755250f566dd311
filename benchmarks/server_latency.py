"""Policy server round trip on loopback: latency and throughput, 1 and 8 clients, batching on/off.

The server is `vla serve` in its own process (as deployed); each client is a thread of this
process with its own `PolicyClient` connection, sending back-to-back requests for a fixed time.
Observations are two cameras at DEFAULT_CAMERA_RESOLUTION (128x128, the quickstart sim's) +
state + instruction, the model the tiny config with random weights (what the tests use), so the numbers show the serving overhead and
what batching buys, not a trained model's speed.

    .venv/bin/python benchmarks/server_latency.py [--seconds 8] [--image-size 128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description  # noqa: E402

from data.schema import DEFAULT_CAMERA_RESOLUTION, STATE_KEY, TASK_KEY, ObservationSpec  # noqa: E402
from data.stats import compute_stats  # noqa: E402
from vla.checkpoint import save_checkpoint  # noqa: E402
from vla.cli import start_server_process, stop_server_process  # noqa: E402
from vla.config import VLAConfig  # noqa: E402
from vla.model import VLAModel  # noqa: E402
from vla.processor import ProcessorConfig  # noqa: E402
from vla.robot import PolicyClient  # noqa: E402
from vla.robot.msgpack_numpy import packb, unpackb  # noqa: E402
from vla.tokenizer import train_tokenizer  # noqa: E402

HORIZON = 8
TASK = "put the red cube on the plate"  # the quickstart's task 0
# Random weights stray far outside their stats' action range; the server's check of served
# actions (default margin 1) is widened so the benchmark measures serving, not refusals.
UNTRAINED_SERVER_ARGS = ("--action-range-margin", "8")


def save_random_checkpoint(directory: Path, spec: ObservationSpec) -> Path:
    """The tiny config with random weights, exported as training exports a checkpoint, its
    cameras recorded at the benchmark's resolution so the server takes the requests as sent."""
    torch.manual_seed(0)
    config = VLAConfig.named("tiny", action_horizon=HORIZON)
    rng = np.random.default_rng(0)
    stats = compute_stats(
        {
            STATE_KEY: rng.normal(size=(1000, config.state_dim)),
            "action": rng.uniform(-1, 1, size=(1000, config.action_dim)),
        }
    )
    train_tokenizer([TASK], vocab_size=512).save_pretrained(directory / "tokenizer")
    return save_checkpoint(
        directory / "checkpoint",
        VLAModel(config).eval(),
        config,
        stats,
        processor=ProcessorConfig().to_dict(),
        observation_spec=spec,
        tokenizer_dir=directory / "tokenizer",
    )


def random_observation(spec: ObservationSpec, seed: int) -> dict[str, object]:
    """What a robot sends: a random uint8 frame per camera of `spec`, the state, the task."""
    rng = np.random.default_rng(seed)
    frames = {
        camera.key: rng.integers(0, 256, camera.shape, dtype=np.uint8) for camera in spec.cameras
    }
    return {**frames, STATE_KEY: rng.normal(size=spec.state_dim).astype(np.float32), TASK_KEY: TASK}


def measure(address: str, clients: int, seconds: float, spec: ObservationSpec) -> dict[str, float]:
    """Round trips of `clients` concurrent connections for `seconds` (after one warm-up each)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    batch_sizes: list[int] = []
    infer_ms: list[float] = []  # the forward pass alone, as the server timed it
    errors: list[str] = []
    window: dict[str, float] = {}

    def open_window() -> None:  # runs once every client is warm, before any is released
        window["start"] = time.perf_counter()
        window["end"] = window["start"] + seconds

    barrier = threading.Barrier(clients + 1, action=open_window)

    def work(index: int) -> None:
        obs = random_observation(spec, seed=index)
        try:
            with PolicyClient(address) as client:
                client.infer(obs)  # warm-up
                barrier.wait()
                while time.perf_counter() < window["end"]:
                    reply = client.infer(obs)
                    latencies[index].append(reply["client_timing"]["round_trip_ms"])
                    batch_sizes.append(int(reply["server_timing"]["batch_size"]))
                    infer_ms.append(float(reply["server_timing"]["infer_ms"]))
        except Exception as error:
            errors.append(f"{type(error).__name__}: {error}")
            barrier.abort()

    threads = [threading.Thread(target=work, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - window["start"]
    if errors:
        raise RuntimeError(f"{len(errors)} client errors, first: {errors[0]}")
    every = np.concatenate([np.asarray(values) for values in latencies])
    return {
        "p50": float(np.percentile(every, 50)),
        "p90": float(np.percentile(every, 90)),
        "throughput": len(every) / elapsed,
        "mean_batch": statistics.fmean(batch_sizes),
        "infer_p50": float(np.percentile(infer_ms, 50)),
        "requests": len(every),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--image-size", type=int, default=DEFAULT_CAMERA_RESOLUTION[0])
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    args = parser.parse_args()
    print(f"machine: {machine_description()}")
    spec = ObservationSpec.uniform(
        VLAConfig.named("tiny").cameras, (args.image_size, args.image_size)
    )
    obs = random_observation(spec, seed=0)
    message = packb(obs)
    codec = min(
        _timed(lambda: unpackb(packb(obs))) for _ in range(20)
    )  # encode + decode, best of 20
    print(
        f"tiny config, horizon {HORIZON}; observation {len(message) / 1024:.0f} KiB "
        f"(2 cameras {args.image_size}x{args.image_size}); msgpack encode+decode {codec * 1e3:.2f} ms\n"
    )
    variants = {
        "batching off (max_batch 1)": ["--max-batch", "1"],
        f"batching on (max_batch 8, max_wait {args.max_wait_ms:g} ms)": [
            "--max-batch",
            "8",
            "--max-wait-ms",
            str(args.max_wait_ms),
        ],
    }
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = save_random_checkpoint(Path(directory), spec)
        for name, extra in variants.items():
            process, address = start_server_process(
                checkpoint, extra_args=[*extra, *UNTRAINED_SERVER_ARGS]
            )
            try:
                for clients in (1, 8):
                    result = measure(address, clients, args.seconds, spec)
                    results[name, clients] = result
                    print(
                        f"{name:45s} {clients} client(s): p50 {result['p50']:7.1f} ms  "
                        f"p90 {result['p90']:7.1f} ms  {result['throughput']:6.1f} replies/s  "
                        f"mean batch {result['mean_batch']:.2f}  forward pass p50 "
                        f"{result['infer_p50']:.1f} ms  ({result['requests']} requests)",
                        flush=True,
                    )
            finally:
                stop_server_process(process)
    off, on = (results[name, 8] for name in variants)
    print(
        f"\n8 clients, batching on vs off: {on['throughput'] / off['throughput']:.2f}x throughput, "
        f"p50 latency {on['p50'] / off['p50']:.2f}x"
    )


def _timed(function) -> float:  # noqa: ANN001
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
