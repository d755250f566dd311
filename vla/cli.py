"""`vla`: serve a checkpoint to robots.

    vla serve --checkpoint DIR [--host 127.0.0.1] [--port 8000] [--token ...] [--max-batch 8]
              [--max-queue 32] [--idle-timeout-s 60] [--action-range-margin 1.0]
              [--allow-unauthenticated] [--fast-path {static,compile,graph,compile-graph}]

    vla verify --checkpoint DIR [--record-manifest]

`start_server_process` runs `vla serve` as a child process (what the deploy demo, the tests and
the latency benchmark do). The demo with the simulator standing in for the robot is
`deploy_demo.py` at the repository root: it wires `sim` and `vla`, which `vla` itself never does.
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

TOKEN_ENV = "VLA_SERVER_TOKEN"


def build_parser() -> argparse.ArgumentParser:
    from vla.fast_path import FAST_PATHS

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
    serve.add_argument(
        "--max-queue", type=int, default=32, help="waiting requests; more get 'overloaded'"
    )
    serve.add_argument(
        "--idle-timeout-s",
        type=float,
        default=60.0,
        help="close a connection that sends nothing for this long (0: never)",
    )
    serve.add_argument(
        "--action-range-margin",
        type=float,
        default=1.0,
        help="refuse chunks outside the checkpoint's action range widened by this fraction of "
        "its width (0: no check)",
    )
    serve.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="allow a non-loopback --host without a token (only on a trusted network)",
    )
    serve.add_argument(
        "--fast-path",
        choices=FAST_PATHS,
        help="the inference fast path (docs/deploy.md): static shapes and precomputed time rows; "
        "'compile' adds torch.compile, 'graph' replays each chunk as a CUDA graph (CUDA only); "
        "default: the eager reference",
    )
    verify = commands.add_parser(
        "verify",
        help="check a checkpoint as loading does (content hashes, config types, stats, weights)",
    )
    verify.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory")
    verify.add_argument(
        "--record-manifest",
        action="store_true",
        help="first record manifest.json for a checkpoint exported without one (only on a copy "
        "you trust: it blesses the files as they are)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "verify":
        return verify(args)
    return serve(args)


def verify(args: argparse.Namespace) -> int:
    """Load a checkpoint the way `vla serve` does (every check of `load_checkpoint`) and say so."""
    from vla.checkpoint import CheckpointError, load_checkpoint, record_manifest

    if args.record_manifest:
        print(f"recorded {record_manifest(args.checkpoint)}")
    try:
        loaded = load_checkpoint(args.checkpoint)
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"invalid: {error}", file=sys.stderr)
        return 1
    parameters = sum(p.numel() for p in loaded.model.parameters())
    print(
        f"{args.checkpoint}: valid ({loaded.manifest_note or 'every file matches manifest.json'}; "
        f"config, stats and {parameters:,} finite weights checked)"
    )
    return 0


def serve(args: argparse.Namespace) -> int:
    import logging

    from vla.fast_path import FastPathError
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
    try:  # every setting is checked before the checkpoint loads (seconds to minutes)
        config = ServerConfig(
            host=args.host,
            port=args.port,
            # None only when neither --token nor the variable is given: a set-but-empty token
            # is refused by ServerConfig instead of silently meaning "no authentication"
            token=args.token,
            max_message_bytes=int(args.max_message_mb * 2**20),
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue,
            idle_timeout_s=args.idle_timeout_s or None,
            action_range_margin=args.action_range_margin or None,
            allow_unauthenticated=args.allow_unauthenticated,
            key_map=key_map,
            seed=args.seed,
        )
    except ValueError as error:
        print(f"vla serve: {error}", file=sys.stderr)
        return 2
    try:
        policy = VLAPolicy.from_pretrained(
            args.checkpoint, device=args.device, fast_path=args.fast_path
        )
    except FastPathError as error:  # e.g. a CUDA graph asked of a CPU device
        print(f"vla serve: {error}", file=sys.stderr)
        return 2
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


if __name__ == "__main__":
    sys.exit(main())
