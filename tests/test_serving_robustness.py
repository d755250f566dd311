"""The policy server and client against the attacks of a hostile review (2026-12-01), each of
which stalled robots, hung a client or served wrong numbers before the fixes: drop-after-send
floods, a full queue, idle sockets holding every connection slot, concurrent handshakes slipping
past the cap, a frozen server with a client blocked mid-send, empty tokens, open binds, and a
model whose actions leave its checkpoint's range. Everything runs on loopback, bounded in count
and time.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY_RESOLUTION, UNTRAINED_ACTION_MARGIN, observation, running
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from websockets.sync.server import serve

from vla.cli import TOKEN_ENV, start_server_process, stop_server_process
from vla.cli import main as vla_main
from vla.policy import VLAPolicy
from vla.robot import Controller, ControllerConfig, PolicyClient, ServerError, protocol
from vla.robot.msgpack_numpy import packb
from vla.serving.server import BackgroundServer, ServerConfig

obs = functools.partial(observation, size=TINY_RESOLUTION[0])


@pytest.fixture()
def policy(tiny_checkpoint: Path) -> VLAPolicy:
    return VLAPolicy.from_pretrained(tiny_checkpoint)


def uri(server: BackgroundServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def http_json(server: BackgroundServer, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


class Gate:
    """Holds the policy's forward pass until opened: a model busy for as long as a test needs."""

    def __init__(self, policy: VLAPolicy) -> None:
        self.entered, self.open = threading.Event(), threading.Event()
        infer = policy.infer

        def gated(*args: Any, **kwargs: Any) -> dict[str, Any]:
            self.entered.set()
            self.open.wait(60)
            return infer(*args, **kwargs)

        policy.infer = gated  # type: ignore[method-assign]


def computed(server: BackgroundServer) -> int:
    """Requests that went through the model."""
    return sum(size * count for size, count in server.server.stats.batch_sizes.items())


@pytest.fixture()
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(8) as executor:
        yield executor


# ====================================================================================== load
def test_requests_of_clients_that_left_never_reach_the_model(policy, pool) -> None:
    """40 clients send a request and vanish while the model is busy. Before the fix every one
    of them was computed after the fact (the next robot waited seconds, the memory grew)."""
    gate = Gate(policy)
    with running(policy, max_batch=4, max_wait_ms=0, max_queue=8) as server:
        first = pool.submit(lambda: PolicyClient(uri(server)).infer(obs(0)))
        assert gate.entered.wait(30)
        for index in range(40):
            ws = connect(uri(server), compression=None, close_timeout=1).__enter__()
            ws.recv(timeout=10)  # metadata
            ws.send(packb(obs(index)))
            ws.close()  # gone before any reply
        stats = server.server.stats
        wait_until(
            lambda: stats.dropped + stats.errors[protocol.OVERLOADED] == 40,
            "the server to notice 40 departed clients",
        )
        gate.open.set()
        assert first.result(30)["actions"].shape[1] == 7
        with PolicyClient(uri(server)) as robot:
            assert np.isfinite(robot.infer(obs(99))["actions"]).all()
        assert computed(server) == 2, "only the two live requests may reach the model"
        assert server.server.health()["queue_depth"] == 0


def test_a_full_queue_answers_overloaded_at_once_and_readiness_says_so(policy, pool) -> None:
    gate = Gate(policy)
    with running(policy, max_batch=1, max_wait_ms=0, max_queue=3, stall_after_s=60) as server:
        clients = [PolicyClient(uri(server)) for _ in range(6)]
        busy = pool.submit(clients[0].infer, obs(0))
        assert gate.entered.wait(30)
        waiting = [pool.submit(client.infer, obs(i)) for i, client in enumerate(clients[1:4])]
        wait_until(lambda: server.server.health()["queue_depth"] == 3, "3 queued requests")
        status, ready = http_json(server, "/readyz")
        assert status == 503 and ready["ready"] is False and ready["queue_depth"] == 3
        assert http_json(server, "/healthz")[0] == 200, "a full queue is not a dead server"
        for client in clients[4:]:  # no silent wait behind the queue
            with pytest.raises(ServerError, match="max_queue 3") as error:
                client.infer(obs(7))
            assert error.value.type == protocol.OVERLOADED
        gate.open.set()
        for future in (busy, *waiting):
            assert future.result(30)["actions"].shape[1] == 7
        status, ready = http_json(server, "/readyz")
        assert status == 200 and ready["model_loaded"] and ready["queue_depth"] == 0
        assert ready["seconds_since_last_forward"] >= 0 and ready["forward_running_s"] is None
        assert computed(server) == 4
        for client in clients:
            client.close()


def test_liveness_fails_while_a_forward_pass_is_stuck(policy, pool) -> None:
    gate = Gate(policy)
    with running(policy, stall_after_s=0.2) as server:
        assert http_json(server, "/healthz")[0] == 200
        with PolicyClient(uri(server)) as client:
            reply = pool.submit(client.infer, obs(0))
            assert gate.entered.wait(30)
            wait_until(lambda: http_json(server, "/healthz")[0] == 503, "/healthz to fail")
            status, health = http_json(server, "/healthz")
            assert health["live"] is False and health["forward_running_s"] > 0.2
            gate.open.set()
            reply.result(30)
        assert http_json(server, "/healthz")[0] == 200


# ====================================================================================== connections
def test_idle_sockets_are_closed_so_they_cannot_lock_robots_out(policy) -> None:
    """Before the fix, idle sockets held every slot (HTTP 503) for as long as they stayed."""
    with running(policy, max_connections=3, idle_timeout_s=0.5) as server:
        idle = [connect(uri(server), compression=None).__enter__() for _ in range(3)]
        for ws in idle:
            ws.recv(timeout=10)
        with pytest.raises(ConnectionRefusedError, match="HTTP 503"):
            PolicyClient(uri(server))  # the cap is exact: 3 means 3
        for ws in idle:  # the server closes them (1001 going away) once idle for 0.5 s
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        with PolicyClient(uri(server)) as robot:
            assert np.isfinite(robot.infer(obs(1))["actions"]).all()
            # a robot that pauses longer than the idle timeout reconnects by itself
            wait_until(lambda: server.server.stats.idle_closed == 4, "the robot's idle close")
            assert np.isfinite(robot.infer(obs(2))["actions"]).all()
        assert server.server.stats.idle_closed == 4


@pytest.mark.parametrize("close_code", [protocol.IDLE_CLOSE_CODE, 1011])
def test_an_idle_close_that_crosses_the_request_is_answered_by_a_resend(close_code) -> None:
    """The idle close can leave the server just as the robot's request leaves the robot: the
    server never reads it. Before the fix the request failed with ConnectionError (CI, 2026-12-04,
    under load). The peer here closes each first connection on its first request, as the real
    server's idle timer does when it fires first; only the idle code (1001) earns a resend."""
    connections = []

    def handler(ws: Any) -> None:
        connections.append(ws)
        ws.send(packb({"action_horizon": 1}))
        request = ws.recv(timeout=10)
        if len(connections) == 1:
            ws.close(close_code, "no request for 0.5 s; reconnect to continue")
            return
        ws.send(packb({"actions": np.full((1, 7), len(request), np.float32)}))

    with serve(handler, "127.0.0.1", 0, compression=None) as peer:
        threading.Thread(target=peer.serve_forever, daemon=True).start()
        address = f"ws://127.0.0.1:{peer.socket.getsockname()[1]}"
        with PolicyClient(address, timeout=30) as robot:
            if close_code != protocol.IDLE_CLOSE_CODE:  # a real failure is not hidden
                with pytest.raises(ConnectionError, match="1011"):
                    robot.infer({"state": np.zeros(8, np.float32)})
                assert len(connections) == 1
                return
            reply = robot.infer({"state": np.zeros(8, np.float32)})
        assert len(connections) == 2, "one reconnect, one resend"
        assert reply["actions"].shape == (1, 7) and reply["actions"][0, 0] > 0
        peer.shutdown()


def test_the_connection_cap_holds_for_concurrent_handshakes(policy) -> None:
    """The cap used to be checked against connections already open, so simultaneous handshakes
    all passed it (and connection max+1 was admitted)."""
    with running(policy, max_connections=3, idle_timeout_s=None) as server:
        start = threading.Barrier(8)

        def open_one(_: int) -> Any:
            start.wait(10)
            try:
                ws = connect(uri(server), compression=None, open_timeout=30).__enter__()
            except InvalidStatus as error:
                return error.response.status_code
            ws.recv(timeout=10)
            return ws

        with ThreadPoolExecutor(8) as executor:
            results = list(executor.map(open_one, range(8)))
        admitted = [result for result in results if not isinstance(result, int)]
        assert len(admitted) == 3 and sorted(set(results) - set(admitted)) == [503]
        assert server.server.stats.refused_connections == 5
        for ws in admitted:
            ws.close()
        with PolicyClient(uri(server)) as robot:  # slots are given back on close
            assert np.isfinite(robot.infer(obs(3))["actions"]).all()


def test_a_client_blocked_sending_to_a_frozen_server_times_out_and_shuts_down(
    tiny_checkpoint,
) -> None:
    """`vla serve` frozen with SIGSTOP while a ~25 MB observation is being sent: the socket's
    buffers fill and `send` blocks. Before the fix `infer` never raised and
    `Controller.shutdown()` never returned, so the final safe action was never sent."""
    process, address = start_server_process(
        tiny_checkpoint,
        extra_args=[
            "--max-message-mb",
            "64",
            "--action-range-margin",
            str(UNTRAINED_ACTION_MARGIN),
        ],
    )
    big = obs(0)
    for key in ("observation.images.agentview", "observation.images.wrist"):
        big[key] = np.random.default_rng(0).integers(0, 255, (2048, 2048, 3), dtype=np.uint8)
    try:
        timed = PolicyClient(address, timeout=2.0)
        forever = PolicyClient(address, timeout=None)  # only shutdown() can unblock this one
        controller = Controller(forever, ControllerConfig())
        os.kill(process.pid, signal.SIGSTOP)
        outcome: list[BaseException | None] = []

        def infer() -> None:
            try:
                timed.infer(big)
                outcome.append(None)
            except BaseException as error:  # noqa: BLE001 - the test reports what came out
                outcome.append(error)

        thread = threading.Thread(target=infer, daemon=True)
        thread.start()
        thread.join(30)
        assert outcome, "infer() hung on a frozen server"
        assert isinstance(outcome[0], TimeoutError), outcome

        controller.act(big)  # the worker starts sending and blocks
        wait_until(lambda: controller.stats.requests == 1, "the request to go out")
        time.sleep(0.5)
        returned: list[np.ndarray] = []
        closer = threading.Thread(
            target=lambda: returned.append(controller.shutdown(timeout=2.0)), daemon=True
        )
        closer.start()
        closer.join(30)
        assert returned, "Controller.shutdown() did not return"
        np.testing.assert_array_equal(returned[0][:6], 0.0)
        wait_until(lambda: not controller.worker_alive, "the worker to stop")
    finally:
        os.kill(process.pid, signal.SIGCONT)
        stop_server_process(process)


# ====================================================================================== auth
def test_a_set_but_empty_token_refuses_to_start(tiny_checkpoint, monkeypatch, capsys) -> None:
    """Before the fix `--token ''` (or VLA_SERVER_TOKEN='') started an open server."""
    with pytest.raises(ValueError, match="set but empty"):
        ServerConfig(token="")
    assert vla_main(["serve", "--checkpoint", str(tiny_checkpoint), "--token", ""]) == 2
    assert "set but empty" in capsys.readouterr().err
    monkeypatch.setenv(TOKEN_ENV, "")
    assert vla_main(["serve", "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "set but empty" in capsys.readouterr().err


def test_binding_another_interface_without_a_token_needs_an_explicit_flag(
    tiny_checkpoint,
) -> None:
    with pytest.raises(ValueError, match="--allow-unauthenticated"):
        ServerConfig(host="0.0.0.0")
    assert vla_main(["serve", "--checkpoint", str(tiny_checkpoint), "--host", "0.0.0.0"]) == 2
    ServerConfig(host="0.0.0.0", token="s3cret")  # a token, or the flag, makes it fine
    ServerConfig(host="0.0.0.0", allow_unauthenticated=True)


# ====================================================================================== actions
def test_actions_outside_the_checkpoints_range_get_an_error_reply(policy) -> None:
    """A corrupted expert (its output bias set to 1e4) produces huge but finite actions; before
    the fix they were served (one such checkpoint sent actions of 4.5e29)."""
    with running(policy, action_range_margin=1.0) as server, PolicyClient(uri(server)) as client:
        served_range = client.metadata["action_range"]
        low, high = np.array(served_range["low"]), np.array(served_range["high"])
        assert low.shape == high.shape == (7,) and (low < high).all()
        with torch.no_grad():
            policy.model.expert.action_out.bias.fill_(1e4)
        with pytest.raises(ServerError, match="outside the checkpoint's action range") as error:
            client.infer(obs(4))
        assert error.value.type == protocol.UNSAFE_ACTIONS
        assert server.server.stats.errors[protocol.UNSAFE_ACTIONS] == 1
