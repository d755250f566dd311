"""Deployment end to end on one machine, with the simulator standing in for the robot.

    python deploy_demo.py --checkpoint outputs/runs/quickstart/export
    python deploy_demo.py --checkpoint DIR --suite quickstart --task 0 --init-state 2 --json

The server runs in its own process (`vla serve`, as it would on a GPU box); this process is the
robot computer: the controller loop (`vla.robot`) at the control frequency, over loopback, with
a MuJoCo environment in place of the robot. This file only wires the parts together — it is the
one place that touches both `sim` and `vla`, which is why it lives at the root beside eval.py
(DESIGN.md: `vla` never imports `sim`).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vla.cli import start_server_process, stop_server_process
from vla.robot import Controller, ControllerConfig, PolicyClient, Rate, StitchConfig
from vla.robot.stitching import STITCH_MODES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory")
    parser.add_argument("--suite", default="quickstart")
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--init-state", type=int, default=0)
    parser.add_argument(
        "--image-size",
        type=int,
        help="camera resolution of the sim (default: the checkpoint's, from the server metadata)",
    )
    parser.add_argument("--max-episode-steps", type=int, help="default: the suite's episode length")
    parser.add_argument("--hz", type=float, default=20.0, help="control frequency")
    parser.add_argument(
        "--replan-every", type=int, help="steps between requests (default: the chunker's, H // 2)"
    )
    parser.add_argument("--deadline", type=float, default=0.5, help="watchdog deadline in seconds")
    parser.add_argument("--stitch", choices=STITCH_MODES, default="blend")
    parser.add_argument("--blend-steps", type=int, default=4)
    parser.add_argument("--freeze-steps", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="the server's device")
    parser.add_argument(
        "--action-range-margin",
        type=float,
        help="the server's check of served actions (vla serve --action-range-margin; an "
        "untrained checkpoint needs a wide one)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.checkpoint / "config.json").is_file():
        print(
            f"error: {args.checkpoint} is not a checkpoint directory (no config.json); "
            "pass the `export/` directory train.py printed",
            file=sys.stderr,
        )
        return 2
    os.environ.setdefault("MUJOCO_GL", "egl")
    token = secrets.token_urlsafe(16)  # the demo authenticates like a real deployment would
    server_args = (
        []
        if args.action_range_margin is None
        else ["--action-range-margin", str(args.action_range_margin)]
    )
    process, uri = start_server_process(
        args.checkpoint, token=token, device=args.device, extra_args=server_args
    )
    try:
        client = PolicyClient(uri, token=token)
        env = make_robot(args, robot_camera_resolution(args, client.metadata))
        try:
            observation, _ = env.reset(options={"init_state": args.init_state})
            controller = Controller(
                client,
                ControllerConfig(
                    control_hz=args.hz,
                    replan_every=args.replan_every,
                    deadline_s=args.deadline,
                    stitch=StitchConfig(args.stitch, args.freeze_steps, args.blend_steps),
                ),
            )
            try:
                report = drive_episode(env, controller, observation)
            finally:
                controller.shutdown()
        finally:
            env.close()
    finally:
        stop_server_process(process)
    report = {"task": env.task_description, "server": uri, **report}
    print_report(report, args.json)
    return 0


def robot_camera_resolution(
    args: argparse.Namespace, metadata: Mapping[str, Any]
) -> tuple[int, int]:
    """What the simulated cameras render: --image-size, else what the server says the checkpoint
    was trained on (its observation spec), as a real robot's camera driver would be set up."""
    if args.image_size:
        return args.image_size, args.image_size
    from data.schema import ObservationSpec

    return ObservationSpec.from_dict(metadata["observation"], "server metadata").resolution


def make_robot(args: argparse.Namespace, image_size: tuple[int, int]) -> Any:
    """The simulated robot: a gymnasium environment of one of sim's suites."""
    import sim

    config: dict[str, Any] = {"image_size": image_size}
    if args.max_episode_steps is not None:
        config["max_episode_steps"] = args.max_episode_steps
    return sim.make(args.suite, args.task, **config)


class Robot(Protocol):
    """What `drive_episode` steps: a gymnasium environment standing in for the robot."""

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]: ...


def drive_episode(
    robot: Robot,
    controller: Controller,
    observation: Mapping[str, Any],
    max_steps: int | None = None,
) -> dict[str, Any]:
    """One episode at the controller's rate, as a robot's own loop would run it; returns what
    happened (success, steps, chunk and round-trip statistics)."""
    controller.start(observation)
    rate = Rate(controller.config.control_hz)
    started = time.monotonic()
    steps, success = 0, False
    while True:
        action = controller.act(observation)
        observation, _, terminated, truncated, info = robot.step(action)
        steps += 1
        success = bool(info.get("success", False))
        if terminated or truncated or (max_steps is not None and steps >= max_steps):
            break
        rate.sleep()
    stats = controller.stats
    round_trip = np.asarray(stats.round_trip_ms) if stats.round_trip_ms else np.zeros(1)
    return {
        "success": success,
        "steps": steps,
        "terminated": bool(terminated),
        "truncated": bool(truncated),
        "seconds": time.monotonic() - started,
        "control_hz": controller.config.control_hz,
        "overruns": rate.overruns,
        "chunks": stats.chunks,
        "requests": stats.requests,
        "request_errors": stats.request_errors,
        "sources": dict(stats.sources),
        "round_trip_ms_p50": float(np.percentile(round_trip, 50)),
        "round_trip_ms_p90": float(np.percentile(round_trip, 90)),
        "latency_steps_mean": float(np.mean(stats.latency_steps)) if stats.latency_steps else 0.0,
    }


def print_report(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report), flush=True)
        return
    outcome = "SUCCESS" if report["success"] else "no success"
    print(f"{outcome}: {report['task']!r} in {report['steps']} steps ({report['seconds']:.1f} s)")
    print(
        f"  control {report['control_hz']:g} Hz, {report['overruns']} overrun ticks; "
        f"{report['chunks']} chunks from {report['requests']} requests "
        f"({report['request_errors']} failed); round trip p50 {report['round_trip_ms_p50']:.1f} ms, "
        f"p90 {report['round_trip_ms_p90']:.1f} ms; chunks used {report['latency_steps_mean']:.1f} "
        f"steps after their observation on average"
    )
    print(f"  commands by source: {report['sources']}")


if __name__ == "__main__":
    sys.exit(main())
