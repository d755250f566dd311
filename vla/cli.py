"""`vla`: serve a checkpoint to robots, and a demo with the simulator standing in for the robot.

    vla serve --checkpoint DIR [--host 127.0.0.1] [--port 8000] [--token ...] [--max-batch 8]
    vla deploy-demo --checkpoint DIR [--suite quickstart --task 0 --init-state 0] [--json]

The demo is deployment end to end on one machine: the server runs in its own process (as it
would on a GPU box), and this process runs the robot side — the controller loop at the control
frequency, with a MuJoCo environment in place of the robot — over loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TOKEN_ENV = "VLA_SERVER_TOKEN"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="serve a checkpoint over websockets (openpi protocol)"
    )
    serve.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback)")
    serve.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    serve.add_argument("--device", default="cpu")
    serve.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help=f"require 'Authorization: Bearer TOKEN' (default: ${TOKEN_ENV}; prefer the "
        f"variable, command lines are visible to other users)",
    )
    serve.add_argument(
        "--max-batch", type=int, default=8, help="requests per forward pass; 1 = off"
    )
    serve.add_argument(
        "--max-wait-ms", type=float, default=2.0, help="how long a batch waits for more requests"
    )
    serve.add_argument("--max-message-mb", type=float, default=8.0, help="largest request accepted")
    serve.add_argument(
        "--key-map",
        nargs="*",
        default=[],
        metavar="ROBOT=OURS",
        help="rename the robot's observation keys, e.g. observation/image=observation.images.agentview prompt=task",
    )
    serve.add_argument("--seed", type=int, help="seed of the noise for requests without their own")

    demo = commands.add_parser(
        "deploy-demo", help="server process + controller loop + simulated robot, one episode"
    )
    demo.add_argument("--checkpoint", type=Path, required=True)
    demo.add_argument("--suite", default="quickstart")
    demo.add_argument("--task", type=int, default=0)
    demo.add_argument("--init-state", type=int, default=0)
    demo.add_argument("--image-size", type=int, default=128, help="camera resolution of the sim")
    demo.add_argument("--max-episode-steps", type=int, help="default: the suite's episode length")
    demo.add_argument("--hz", type=float, default=20.0, help="control frequency")
    demo.add_argument("--replan-every", type=int, help="steps between requests (default H/2)")
    demo.add_argument("--deadline", type=float, default=0.5, help="watchdog deadline in seconds")
    demo.add_argument("--stitch", choices=("replace", "freeze", "blend"), default="blend")
    demo.add_argument("--blend-steps", type=int, default=4)
    demo.add_argument("--freeze-steps", type=int, default=2)
    demo.add_argument("--device", default="cpu", help="the server's device")
    demo.add_argument("--json", action="store_true", help="print the report as one JSON line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return deploy_demo(args)


def serve(args: argparse.Namespace) -> int:
    import logging

    from vla.policy import VLAPolicy
    from vla.serving.server import PolicyServer, ServerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # one line per connection opened/closed is noise on a busy server; failures still show
    logging.getLogger("vla.serving.websockets").setLevel(logging.WARNING)
    key_map = {}
    for pair in args.key_map:
        robot, sep, ours = pair.partition("=")
        if not sep or not robot or not ours:
            print(f"--key-map takes ROBOT=OURS pairs, got {pair!r}", file=sys.stderr)
            return 2
        key_map[robot] = ours
    config = ServerConfig(
        host=args.host,
        port=args.port,
        token=args.token or None,
        max_message_bytes=int(args.max_message_mb * 2**20),
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        key_map=key_map,
        seed=args.seed,
    )
    policy = VLAPolicy.from_pretrained(args.checkpoint, device=args.device)
    try:
        PolicyServer(policy, config).run()
    except OSError as error:  # the port is taken, or the host is not an address of this machine
        print(f"cannot serve on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    return 0


def start_server_process(
    checkpoint: Path,
    token: str | None = None,
    device: str = "cpu",
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
) -> tuple[subprocess.Popen[str], str]:
    """`vla serve` on a free loopback port in a child process; returns (process, ws:// uri).

    The port is the one the child actually bound (it prints it), so there is no race for a free
    port. The token travels in the environment, not on the command line.
    """
    env = dict(os.environ)
    env.pop(TOKEN_ENV, None)
    if token:
        env[TOKEN_ENV] = token
    command = [sys.executable, "-m", "vla.cli", "serve", "--checkpoint", str(checkpoint)]
    process = subprocess.Popen(
        [*command, "--port", "0", "--device", device, *extra_args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline()
            if line.startswith("serving on "):
                return process, line.split("serving on ", 1)[1].strip()
            if not line:  # EOF: the child died
                break
        if process.poll() is not None:
            break
    stop_server_process(process)
    raise RuntimeError(
        f"`vla serve --checkpoint {checkpoint}` did not start (exit code {process.returncode}); "
        f"see its messages above"
    )


def stop_server_process(process: subprocess.Popen[str], timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()  # SIGTERM: the server closes its connections and exits
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


def deploy_demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    from vla.client import PolicyClient
    from vla.deploy import Controller, ControllerConfig, run_episode
    from vla.serving.stitching import StitchConfig

    token = secrets.token_urlsafe(16)  # the demo authenticates like a real deployment would
    process, uri = start_server_process(args.checkpoint, token=token, device=args.device)
    try:
        env = _make_robot(args)
        try:
            observation, _ = env.reset(options={"init_state": args.init_state})
            client = PolicyClient(uri, token=token)
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
                report = run_episode(env, controller, observation)
            finally:
                controller.shutdown()
        finally:
            env.close()
    finally:
        stop_server_process(process)
    report = {"task": env.task_description, "server": uri, **report}
    _print_report(report, args.json)
    return 0


def _make_robot(args: argparse.Namespace) -> Any:
    """The simulated robot. The only place `vla` touches `sim`, imported only by this demo:
    the server, client and controller never need it (DESIGN.md: vla never imports sim)."""
    from sim.registry import make

    config: dict[str, Any] = {"image_size": (args.image_size, args.image_size)}
    if args.max_episode_steps is not None:
        config["max_episode_steps"] = args.max_episode_steps
    return make(args.suite, args.task, **config)


def _print_report(report: dict[str, Any], as_json: bool) -> None:
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
