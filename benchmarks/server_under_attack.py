"""How one robot fares while other clients misbehave: the attacks of the 2026-12-01 review,
replayed against `vla serve` in its own process, each compared with the same robot on an idle
server in the same run.

- drop-after-send flood: 4 threads x 250 clients that connect, send an observation and leave
  without reading the reply. Reported: the robot's first round trip right after the flood, and
  the server's resident memory before and after.
- large-message flood: 3 clients sending observations padded with 7 MiB of keys the model does
  not read, back to back. Reported: /healthz and the robot's round trips during the flood.
- idle sockets: 65 connections that never send a request, against a 64-connection cap.
  Reported: how long a robot is locked out (the server's idle timeout is set to 5 s here).

    .venv/bin/python benchmarks/server_under_attack.py [--image-size 128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description  # noqa: E402
from server_latency import (  # noqa: E402
    UNTRAINED_SERVER_ARGS,
    random_observation,
    save_random_checkpoint,
)
from websockets.sync.client import connect  # noqa: E402

from data.schema import DEFAULT_CAMERA_RESOLUTION, ObservationSpec  # noqa: E402
from vla.cli import start_server_process, stop_server_process  # noqa: E402
from vla.config import VLAConfig  # noqa: E402
from vla.robot import PolicyClient  # noqa: E402
from vla.robot.msgpack_numpy import packb  # noqa: E402

IDLE_TIMEOUT_S = 5.0
LOCKOUT_LIMIT_S = 30.0  # a robot gives up after this long


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def round_trips_ms(address: str, observation: dict, count: int) -> list[float]:
    with PolicyClient(address, timeout=120) as robot:
        return [timed_ms(lambda: robot.infer(observation)) for _ in range(count)]


def timed_ms(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return (time.perf_counter() - start) * 1000


def healthz_ms(address: str) -> float:
    url = address.replace("ws://", "http://") + "/healthz"

    def get() -> None:
        with urllib.request.urlopen(url, timeout=120) as response:
            response.read()

    return timed_ms(get)


def drop_after_send(address: str, message: bytes, threads: int, clients: int) -> None:
    def work() -> None:
        for _ in range(clients):
            try:
                ws = connect(address, compression=None, close_timeout=0.1, open_timeout=60)
                ws = ws.__enter__()
                ws.recv(timeout=60)
                ws.send(message)
                ws.close()
            except Exception:  # noqa: BLE001 - a refused attacker is fine
                pass

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def large_message_flood(address: str, message: bytes, clients: int, stop: threading.Event) -> None:
    def work() -> None:
        try:
            with connect(address, compression=None, max_size=None) as ws:
                ws.recv(timeout=60)
                while not stop.is_set():
                    ws.send(message)
                    ws.recv(timeout=120)
        except Exception:  # noqa: BLE001
            pass

    for _ in range(clients):
        threading.Thread(target=work, daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image-size", type=int, default=DEFAULT_CAMERA_RESOLUTION[0])
    args = parser.parse_args()
    print(f"machine: {machine_description()}")
    spec = ObservationSpec.uniform(
        VLAConfig.named("tiny").cameras, (args.image_size, args.image_size)
    )
    robot_obs = random_observation(spec, seed=0)
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = save_random_checkpoint(Path(directory), spec)
        process, address = start_server_process(
            checkpoint,
            extra_args=[*UNTRAINED_SERVER_ARGS, "--idle-timeout-s", str(IDLE_TIMEOUT_S)],
        )
        try:
            round_trips_ms(address, robot_obs, 5)  # warm-up
            idle = statistics.median(round_trips_ms(address, robot_obs, 20))
            idle_health = statistics.median(healthz_ms(address) for _ in range(20))
            print(f"idle server: robot round trip p50 {idle:.1f} ms, /healthz {idle_health:.1f} ms")

            before = rss_mb(process.pid)
            start = time.perf_counter()
            drop_after_send(address, packb(robot_obs), threads=4, clients=250)
            flood_s = time.perf_counter() - start
            after_flood = round_trips_ms(address, robot_obs, 1)[0]
            time.sleep(1.0)
            after = rss_mb(process.pid)
            print(
                f"drop-after-send flood (4x250 clients, {flood_s:.1f} s): the robot's next round "
                f"trip {after_flood:.1f} ms ({after_flood / idle:.1f}x idle); server RSS "
                f"{before:.0f} -> {after:.0f} MB"
            )

            padded = dict(robot_obs)
            for index in range(7 * 1024):  # 7 MiB of keys nobody reads
                padded[f"ignored/{index}"] = b"x" * 1024
            stop = threading.Event()
            large_message_flood(address, packb(padded), clients=3, stop=stop)
            time.sleep(1.0)
            health = [healthz_ms(address) for _ in range(10)]
            robot = round_trips_ms(address, robot_obs, 10)
            stop.set()
            print(
                f"7 MiB-message flood (3 clients): /healthz p50 {statistics.median(health):.1f} ms"
                f" (max {max(health):.1f}); robot round trip p50 {statistics.median(robot):.1f} ms"
                f" ({statistics.median(robot) / idle:.1f}x idle, max {max(robot):.1f})"
            )
            time.sleep(2.0)

            sockets = []
            for _ in range(65):
                try:
                    ws = connect(address, compression=None).__enter__()
                    ws.recv(timeout=30)
                    sockets.append(ws)
                except Exception:  # noqa: BLE001 - the 65th is refused: the cap is 64
                    break
            start = time.perf_counter()
            locked_out, served = 0.0, False
            while locked_out < LOCKOUT_LIMIT_S:
                try:
                    round_trips_ms(address, robot_obs, 1)
                    served = True
                    break
                except ConnectionRefusedError:
                    locked_out = time.perf_counter() - start
                    time.sleep(0.1)
            print(
                f"idle sockets: {len(sockets)} admitted of 65 (cap 64); a robot was locked out "
                f"for {locked_out:.1f} s{'' if served else ' and gave up'} (idle timeout "
                f"{IDLE_TIMEOUT_S:g} s)"
            )
            for ws in sockets:
                ws.close()
        finally:
            stop_server_process(process)


if __name__ == "__main__":
    main()
