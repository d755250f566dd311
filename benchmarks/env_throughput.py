"""Environment steps/s with both cameras: our table-top suite against a real LIBERO env.

Both render agentview + wrist at the same size and step with the same random OSC_POSE actions,
one process each, in the same run. Rendering dominates on a CPU, so this is mostly a measure of
scene complexity and render settings (LIBERO: ~300k-triangle meshes, shadows, reflections; ours:
primitives, no shadows, no reflections).

LIBERO is also timed drawing its frames only on the steps a policy looks at (the evaluation
default: 5 actions executed per chunk of 10; the frames drawn are the protocol's bit for bit),
with the cheaper frames of `render_quality="fast"` (for generating training data: no reflections,
no multisampling), and with no cameras at all (physics only, the expert table's setting).

    MUJOCO_GL=egl .venv/bin/python benchmarks/env_throughput.py [--steps 60] [--size 128]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("MUJOCO_GL", "egl")
from common import machine_description  # noqa: E402

import sim  # noqa: E402
from data.schema import ACTION_DIM, DEFAULT_CAMERA_RESOLUTION, image_key  # noqa: E402


def steps_per_second(
    suite: str, task: int, steps: int, size: int, draw_every: int = 1, **config: object
) -> float:
    """Steps/s over `steps` random actions; with `draw_every` n > 1 only every n-th step's frames
    are drawn (`env.render_images` off in between), as an evaluation that executes n actions
    per policy call does."""
    env = sim.make(suite, task, image_size=(size, size), **config)
    env.reset(options={"init_state": 0})
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.3, 0.3, (steps, ACTION_DIM)).astype(np.float32)
    env.step(actions[0])  # warm-up
    start = time.perf_counter()
    for index, action in enumerate(actions):
        drawn = config.get("render_images", True) and (index + 1) % draw_every == 0
        if draw_every > 1:
            env.render_images = drawn
        observation = env.step(action)[0]
        if drawn:
            assert observation[image_key("wrist")].shape == (size, size, 3)
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--size", type=int, default=DEFAULT_CAMERA_RESOLUTION[0])  # square
    args = parser.parse_args()
    print(f"machine: {machine_description()}")
    print(f"{args.steps} steps, both cameras at {args.size}x{args.size}, random actions\n")
    results = {
        "ours: quickstart task 0": steps_per_second("quickstart", 0, args.steps, args.size),
        "ours: tabletop task 12 (most objects)": steps_per_second(
            "tabletop", 12, args.steps, args.size
        ),
        "ours: tabletop task 12, images off": steps_per_second(
            "tabletop", 12, args.steps, args.size, render_images=False
        ),
        "LIBERO: libero_spatial task 0": steps_per_second(
            "libero_spatial", 0, args.steps, args.size
        ),
        "LIBERO: libero_10 task 0": steps_per_second("libero_10", 0, args.steps, args.size),
        "LIBERO: libero_spatial task 0, drawn 1 step in 5": steps_per_second(
            "libero_spatial", 0, args.steps, args.size, draw_every=5
        ),
        "LIBERO: libero_spatial task 0, fast render": steps_per_second(
            "libero_spatial", 0, args.steps, args.size, render_quality="fast"
        ),
        "LIBERO: libero_10 task 0, fast render": steps_per_second(
            "libero_10", 0, args.steps, args.size, render_quality="fast"
        ),
        "LIBERO: libero_spatial task 0, images off": steps_per_second(
            "libero_spatial", 0, args.steps, args.size, render_images=False
        ),
    }
    for name, value in results.items():
        print(f"{name:<50} {value:7.1f} steps/s")
    ours = min(results["ours: quickstart task 0"], results["ours: tabletop task 12 (most objects)"])
    libero = max(results["LIBERO: libero_spatial task 0"], results["LIBERO: libero_10 task 0"])
    print(f"\nslowest of ours / fastest LIBERO: {ours / libero:.1f}x")
    spatial = results["LIBERO: libero_spatial task 0"]
    skipping = results["LIBERO: libero_spatial task 0, drawn 1 step in 5"]
    print(
        f"LIBERO drawing 1 step in 5 (a chunk of 10, 5 executed) / every step: {skipping / spatial:.1f}x"
    )
    for suite in ("libero_spatial", "libero_10"):
        fast = results[f"LIBERO: {suite} task 0, fast render"]
        protocol = results[f"LIBERO: {suite} task 0"]
        print(f"LIBERO {suite} fast render / protocol render (every frame): {fast / protocol:.1f}x")


if __name__ == "__main__":
    main()
