"""The policy server on a real loopback socket: wire codec, replies, auth, fuzzing, concurrency.

Every server here serves a tiny checkpoint saved to disk and loaded back, as `vla serve` does.
"""

from __future__ import annotations

import functools
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import torch
from conftest import (
    MAX_MESSAGE,
    TINY_HORIZON,
    TINY_RESOLUTION,
    observation,
    running,
    save_tiny_checkpoint,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from data.schema import ObservationSpec
from vla.policy import VLAPolicy
from vla.robot import InvalidObservation, PolicyClient, RequestSpec, ServerError, protocol
from vla.robot.msgpack_numpy import DecodeError, packb, unpackb
from vla.serving.server import BackgroundServer, reference_noise

IMAGE = TINY_RESOLUTION[0]  # camera resolution of the test observations (as trained)
obs = functools.partial(observation, size=IMAGE)


@pytest.fixture(scope="module")
def policy(tiny_checkpoint: Path) -> VLAPolicy:
    return VLAPolicy.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def server(policy: VLAPolicy) -> Iterator[BackgroundServer]:
    with running(policy, max_batch=8, max_wait_ms=20) as server:
        yield server


def uri(server: BackgroundServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


# ====================================================================================== codec
DTYPES = [
    "|b1",
    "|i1",
    "<i2",
    "<i4",
    "<i8",
    "|u1",
    "<u2",
    "<u4",
    "<u8",
    "<f2",
    "<f4",
    "<f8",
    ">f4",
    ">i8",
]


@pytest.mark.parametrize("dtype", DTYPES)
def test_codec_round_trip_is_exact(dtype: str) -> None:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=2 * 3 * 5 * np.dtype(dtype).itemsize, dtype=np.uint8)
    array = np.frombuffer(raw.tobytes(), dtype=dtype).reshape(2, 3, 5)  # any bit pattern, NaNs too
    message = {
        "array": array,
        "transposed": array.transpose(2, 0, 1),  # non-contiguous
        "empty": np.zeros((0, 4), dtype=dtype),
        "zero_d": np.array(array.flat[0]),
        "scalar": array.flat[1],
        "nested": [{"x": (array[0], 3, "text", b"bytes", None, 1.5, True)}],
    }
    decoded = unpackb(packb(message))

    def same(a: Any, b: Any) -> None:
        assert type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()

    for key in ("array", "transposed", "empty", "zero_d"):
        same(decoded[key], message[key])  # tobytes() is C order for any layout
    same(decoded["scalar"], message["scalar"])
    inner = decoded["nested"][0]["x"]
    same(inner[0], array[0])
    assert inner[1:] == [3, "text", b"bytes", None, 1.5, True]


def test_codec_speaks_openpis_wire_format() -> None:
    """Maps with bytes keys, dtype.str and a shape list: what openpi's msgpack_numpy writes."""
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = msgpack.unpackb(packb({"a": array, "s": np.float64(2.5)}), strict_map_key=False)
    assert raw["a"] == {
        b"__ndarray__": True,
        b"data": array.tobytes(),
        b"dtype": "<f4",
        b"shape": [2, 3],
    }
    assert raw["s"] == {b"__npgeneric__": True, b"data": 2.5, b"dtype": "<f8"}
    # and an openpi-style encoder's output (tuple shape, bytes keys) decodes here
    openpi_style = msgpack.packb(
        {b"__ndarray__": True, b"data": array.tobytes(), b"dtype": "<f4", b"shape": (2, 3)},
        use_bin_type=True,
    )
    np.testing.assert_array_equal(unpackb(openpi_style), array)


@pytest.mark.parametrize(
    "fields",
    [
        {"dtype": "|O", "data": b"\0" * 8, "shape": [1]},  # object: would need pickle
        {"dtype": "|V8", "data": b"\0" * 8, "shape": [1]},
        {"dtype": "<U2", "data": b"\0" * 8, "shape": [1]},
        {"dtype": "i4,O", "data": b"\0" * 12, "shape": [1]},
        {"dtype": "<M8[s]", "data": b"\0" * 8, "shape": [1]},
        {"dtype": "<f4", "data": b"\0" * 7, "shape": [2]},  # data does not fill the shape
        {"dtype": "<f4", "data": b"\0" * 8, "shape": [-2, -1]},
        {"dtype": "<f4", "data": "not bytes", "shape": [1]},
        {"dtype": "<f4", "data": b"", "shape": [2**62, 2**62, 0, 5]},
        {"dtype": "<f4", "shape": [1]},
    ],
)
def test_codec_refuses_unsafe_or_inconsistent_arrays(fields: dict[str, Any]) -> None:
    message = msgpack.packb({b"__ndarray__": True, **fields}, use_bin_type=True)
    with pytest.raises(DecodeError):
        unpackb(message)
    with pytest.raises(TypeError, match="cannot encode"):
        packb({"objects": np.array([object()], dtype=object)})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_codec_decodes_any_bytes_or_raises_decode_error(data: bytes) -> None:
    try:
        unpackb(data)
    except DecodeError:
        pass


# ====================================================================================== replies
def test_metadata_and_seeded_reply_is_the_policys_infer_dict(
    server, policy, tiny_checkpoint
) -> None:
    with PolicyClient(uri(server)) as client:
        meta = client.metadata
        assert meta["action_horizon"] == TINY_HORIZON and meta["action_dim"] == 7
        assert meta["can_reason"] is True
        assert meta["request"]["image_keys"] == [
            "observation.images.agentview",
            "observation.images.wrist",
        ]
        # the checkpoint's cameras at their trained resolution, exactly as config.json holds them
        saved = json.loads((tiny_checkpoint / "config.json").read_text())["observation"]
        assert meta["observation"] == saved
        assert ObservationSpec.from_dict(meta["observation"]).resolution == (IMAGE, IMAGE)
        assert meta["max_message_bytes"] == MAX_MESSAGE and meta["protocol"] == protocol.PROTOCOL
        reply = client.infer(obs(1), seed=7)
        again = client.infer(obs(1), seed=7)
        other = client.infer(obs(1), seed=8)
    actions = reply["actions"]
    assert actions.shape == (TINY_HORIZON, 7) and actions.dtype == np.float32
    expected = policy.infer([obs(1)], noise=reference_noise(7, TINY_HORIZON, 7))
    np.testing.assert_array_equal(actions, expected["actions"][0])
    np.testing.assert_array_equal(again["actions"], actions)
    assert not np.allclose(other["actions"], actions), "the seed must select the noise"
    # the policy's dict for this observation, plus the server's and the client's timing
    assert set(reply) == {"actions", "reasoning", "timing", "server_timing", "client_timing"}
    assert reply["reasoning"] is None and set(reply["timing"]) == set(expected["timing"])
    assert reply["timing"]["total_ms"] > 0
    assert reply["server_timing"]["batch_size"] == 1 and reply["server_timing"]["infer_ms"] > 0


def test_think_and_reasoning_reuse_over_the_wire_match_the_policy(server, policy) -> None:
    noise = reference_noise(5, TINY_HORIZON, 7)
    with PolicyClient(uri(server)) as client:
        thought = client.infer(obs(1), seed=5, think=True)
        reused = client.infer(obs(1), seed=5, reasoning="PLAN: grasp cube. SUBTASK: grasp cube.")
        with pytest.raises(InvalidObservation, match="not both"):
            client.infer(obs(1), think=True, reasoning="PLAN: x.")
    expected = policy.infer([obs(1)], think=True, noise=noise)
    assert (
        isinstance(thought["reasoning"], str) and thought["reasoning"] == expected["reasoning"][0]
    )
    np.testing.assert_array_equal(thought["actions"], expected["actions"][0])
    assert thought["timing"]["reasoning_ms"] > 0
    expected = policy.infer(
        [obs(1)], reasoning=["PLAN: grasp cube. SUBTASK: grasp cube."], noise=noise
    )
    assert reused["reasoning"] == "PLAN: grasp cube. SUBTASK: grasp cube."
    np.testing.assert_array_equal(reused["actions"], expected["actions"][0])


def test_requests_of_different_kinds_in_one_batch_each_get_their_own_call(policy) -> None:
    """A plain and a think request arriving together: one policy call per kind, right replies."""
    with running(policy, max_batch=8, max_wait_ms=500) as server:
        clients = [PolicyClient(uri(server)), PolicyClient(uri(server))]
        replies: dict[str, dict[str, Any]] = {}
        threads = [
            threading.Thread(target=lambda: replies.update(act=clients[0].infer(obs(2), seed=1))),
            threading.Thread(
                target=lambda: replies.update(think=clients[1].infer(obs(3), seed=2, think=True))
            ),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        for client in clients:
            client.close()
        stats = server.server.stats
    assert stats.forward_passes == 2 and stats.batch_sizes == {1: 2}, stats
    assert replies["act"]["reasoning"] is None and isinstance(replies["think"]["reasoning"], str)
    np.testing.assert_array_equal(
        replies["act"]["actions"],
        policy.infer([obs(2)], noise=reference_noise(1, TINY_HORIZON, 7))["actions"][0],
    )
    np.testing.assert_array_equal(
        replies["think"]["actions"],
        policy.infer([obs(3)], think=True, noise=reference_noise(2, TINY_HORIZON, 7))["actions"][0],
    )


def test_an_act_only_checkpoint_refuses_to_think_with_an_error_reply(tmp_path: Path) -> None:
    act_only = VLAPolicy.from_pretrained(save_tiny_checkpoint(tmp_path, reasoning_dropout=1.0))
    with running(act_only) as server, PolicyClient(uri(server)) as client:
        assert client.metadata["can_reason"] is False
        for options in ({"think": True}, {"reasoning": "PLAN: grasp cube."}):
            with pytest.raises(ServerError, match="cannot think") as error:
                client.infer(obs(4), **options)
            assert error.value.type == protocol.UNSUPPORTED
            assert "checkpoint" in error.value.message  # names what refused, and why
        assert client.infer(obs(4))["actions"].shape == (TINY_HORIZON, 7), "still serving"
        stats = server.server.stats
    assert stats.errors[protocol.UNSUPPORTED] == 2 and stats.errors[protocol.INTERNAL] == 0


def test_key_map_lets_a_robot_use_its_own_keys(server, policy) -> None:
    key_map = {
        "observation/image": "observation.images.agentview",
        "observation/wrist_image": "observation.images.wrist",
        "observation/state": "observation.state",
        "prompt": "task",
    }
    ours = obs(2)
    robot = {robot_key: ours[our_key] for robot_key, our_key in key_map.items()}
    with running(policy, key_map=key_map) as mapped, PolicyClient(uri(mapped)) as client:
        actions = client.infer(robot, seed=3)["actions"]
        with pytest.raises(InvalidObservation, match=r"lacks \['prompt'\]"):
            client.infer({k: v for k, v in robot.items() if k != "prompt"})
    with PolicyClient(uri(server)) as client:
        np.testing.assert_array_equal(actions, client.infer(ours, seed=3)["actions"])


def test_health_check_and_token_authentication(policy) -> None:
    with running(policy, token="s3cret") as secured:
        with urllib.request.urlopen(f"http://127.0.0.1:{secured.port}/healthz", timeout=10) as r:
            assert r.status == 200 and json.loads(r.read())["live"] is True  # no token needed
        for token in (None, "wrong", "s3cret-but-longer"):
            with pytest.raises(ConnectionRefusedError, match="HTTP 401"):
                PolicyClient(uri(secured), token=token)
        with PolicyClient(uri(secured), token="s3cret") as client:
            assert client.infer(obs(3))["actions"].shape == (TINY_HORIZON, 7)
        # openpi's client sends "Api-Key <token>"
        with connect(uri(secured), additional_headers={"Authorization": "Api-Key s3cret"}) as ws:
            assert unpackb(ws.recv(timeout=10))["action_horizon"] == TINY_HORIZON
        assert secured.server.stats.errors["unauthorized"] == 3


def test_client_checks_before_sending(server) -> None:
    with PolicyClient(uri(server)) as client:
        before = server.server.stats.requests
        with pytest.raises(InvalidObservation, match=r"'observation.state' must be a float32"):
            client.infer(obs(4, **{"observation.state": np.zeros(8, dtype=np.int64)}))
        big = np.zeros((300, 300, 3), dtype=np.uint8)  # 270 kB > 256 KiB
        with pytest.raises(ValueError, match="over the server's limit"):
            client.infer(obs(4, **{"observation.images.wrist": big}))
        assert server.server.stats.requests == before, "nothing was sent"


# ====================================================================================== fuzzing
def malformed_requests(rng: np.random.Generator, count: int) -> Iterator[tuple[str, str | bytes]]:
    """(kind, frame) pairs of requests the server must answer with an error reply."""
    valid = obs(5)

    def encoded(message: Any) -> bytes:
        return msgpack.packb(message, default=_raw_array, use_bin_type=True)

    def bad_array(**fields: Any) -> dict[bytes, Any]:
        base = {b"__ndarray__": True, b"data": b"\0" * 32, b"dtype": "<f4", b"shape": [8]}
        base.update({key.encode(): value for key, value in fields.items()})
        return base

    keys = list(valid)
    makers = {
        "missing key": lambda: encoded(_without(valid, keys[rng.integers(len(keys))])),
        "image dtype": lambda: encoded(
            {
                **valid,
                keys[rng.integers(2)]: valid[keys[0]].astype(
                    rng.choice(["<f4", "<i2", "|b1", "<u2"])
                ),
            }
        ),
        "image shape": lambda: encoded(
            {
                **valid,
                keys[rng.integers(2)]: np.zeros(
                    [(IMAGE, IMAGE), (IMAGE, IMAGE, 4), (0, IMAGE, 3), (1, 5000, 3), (3,), ()][
                        rng.integers(6)
                    ],
                    dtype=np.uint8,
                ),
            }
        ),
        "state dtype": lambda: encoded(
            {
                **valid,
                "observation.state": np.zeros(8, dtype=rng.choice(["<i4", "<f2", "|u1", "|b1"])),
            }
        ),
        "state shape": lambda: encoded(
            {
                **valid,
                "observation.state": np.zeros(
                    [(7,), (9,), (8, 1), (1, 8), (), (0,)][rng.integers(6)], dtype=np.float32
                ),
            }
        ),
        "state not an array": lambda: encoded(
            {**valid, "observation.state": [[0.0] * 8, "eight", None, 3.5][rng.integers(4)]}
        ),
        "NaN/Inf": lambda: encoded({**valid, "observation.state": _poisoned_state(rng)}),
        "task": lambda: encoded(
            {**valid, "task": [None, 5, b"bytes", ["a"], "x" * 5000][rng.integers(5)]}
        ),
        "not a map": lambda: encoded([[1, 2], 7, "obs", b"obs", None, 1.5][rng.integers(6)]),
        "non-string key": lambda: encoded({**valid, int(rng.integers(100)): 1}),
        "bad array map": lambda: encoded(
            {
                **valid,
                "observation.state": [
                    bad_array(dtype="|O"),
                    bad_array(dtype="<U4"),
                    bad_array(dtype="|V4"),
                    bad_array(dtype="<f4,<i4"),
                    bad_array(shape=[9]),
                    bad_array(shape=[-8]),
                    bad_array(shape="8"),
                    bad_array(data="text"),
                    bad_array(dtype=5),
                ][rng.integers(9)],
            }
        ),
        "bad options": lambda: encoded(
            {
                **valid,
                protocol.OPTIONS_KEY: [
                    {"seed": -1},
                    {"seed": "7"},
                    {"steps": 3},
                    5,
                    {"seed": 2**63},
                    {"think": "yes"},
                    {"think": True, "reasoning": "PLAN: x."},
                    {"reasoning": 5},
                ][rng.integers(8)],
            }
        ),
        "ext type": lambda: encoded(
            {**valid, "task": msgpack.ExtType(int(rng.integers(128)), b"x")}
        ),
        "garbage bytes": lambda: rng.integers(
            0, 256, int(rng.integers(0, 2000)), dtype=np.uint8
        ).tobytes(),
        "truncated": lambda: encoded(valid)[: int(rng.integers(1, len(encoded(valid))))],
        "nested": lambda: b"\x91" * int(rng.integers(2000, 20000)),  # [[[[...]]]] too deep
        "text frame": lambda: [json.dumps({"task": "x"}), "hello", "", "\x00\xff"][rng.integers(4)],
    }
    kinds = list(makers)
    for index in range(count):
        kind = kinds[index % len(kinds)]
        yield kind, makers[kind]()


def _without(message: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != key}


def _poisoned_state(rng: np.random.Generator) -> np.ndarray:
    state = rng.normal(size=8).astype(rng.choice(["<f4", "<f8"]))  # (8,)
    poisoned = rng.random(8) < 0.3
    poisoned[rng.integers(8)] = True
    state[poisoned] = rng.choice([np.nan, np.inf, -np.inf], size=int(poisoned.sum()))
    return state


def _raw_array(value: Any) -> Any:
    """msgpack default for the fuzzer: arrays in openpi's format, whatever their dtype."""
    if isinstance(value, np.ndarray):
        return {
            b"__ndarray__": True,
            b"data": value.tobytes(),
            b"dtype": value.dtype.str,
            b"shape": list(value.shape),
        }
    raise TypeError(type(value))


def test_fuzzed_malformed_requests_get_error_replies_and_serving_continues(policy) -> None:
    rng = np.random.default_rng(1234)
    with running(policy) as server:
        kinds: dict[str, int] = {}
        with connect(uri(server), max_size=None, compression=None) as ws:
            ws.recv(timeout=10)  # metadata
            for kind, frame in malformed_requests(rng, 1100):
                ws.send(frame)
                reply = ws.recv(timeout=30)
                assert isinstance(reply, str), (
                    f"{kind}: expected an error reply, got a binary frame"
                )
                error_type, message = protocol.parse_error_reply(reply)
                assert error_type in (protocol.BAD_FRAME, protocol.INVALID_OBSERVATION), (
                    kind,
                    reply,
                )
                assert message
                kinds[kind] = kinds.get(kind, 0) + 1
            # the same connection still serves a valid request
            ws.send(packb(obs(6)))
            assert unpackb(ws.recv(timeout=30))["actions"].shape == (TINY_HORIZON, 7)
        assert sum(kinds.values()) == 1100 and len(kinds) == 17

        # oversize messages: the websocket layer closes with 1009 before buffering them
        for size in (MAX_MESSAGE + 1, 4 * MAX_MESSAGE):
            with connect(uri(server), max_size=None, compression=None) as ws:
                ws.recv(timeout=10)
                ws.send(b"\x00" * size)
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=30)
                assert closed.value.rcvd.code == protocol.CLOSE_MESSAGE_TOO_BIG
                assert "exceeds limit" in closed.value.rcvd.reason

        # the wrong protocol entirely: plain HTTP, raw bytes on the socket
        with pytest.raises(urllib.error.HTTPError) as http:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=10)
        assert http.value.code in (400, 426)
        for garbage in (b"\x16\x03\x01\x02\x00\x01\x00", b"GET / HTTP/1.1\r\n\r\n", b"\xff" * 100):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
                raw.sendall(garbage)
                raw.shutdown(socket.SHUT_WR)
                answer = raw.recv(1000)
                assert answer == b"" or answer.startswith(b"HTTP/1.1 4")

        with PolicyClient(uri(server)) as client:
            assert np.isfinite(client.infer(obs(7))["actions"]).all()
        stats = server.server.stats
        assert server.alive and stats.errors[protocol.INTERNAL] == 0
        assert stats.errors[protocol.BAD_FRAME] + stats.errors[protocol.INVALID_OBSERVATION] == 1100


def test_unusual_but_valid_observations_are_served(server) -> None:
    """Edge values the model must take without failing: 1-pixel and oversized cameras (the
    trained aspect ratio, so they are resized), huge state, no text."""
    with PolicyClient(uri(server)) as client:
        for observation_ in (
            obs(8, **{"observation.images.wrist": np.zeros((1, 1, 3), dtype=np.uint8)}),
            obs(8, **{"observation.images.agentview": np.full((200, 200, 3), 255, dtype=np.uint8)}),
            obs(8, **{"observation.state": np.full(8, 1e30)}),
            obs(8, task=""),
            obs(8, task="ünïcode ✓ " * 20, extra_key={"ignored": [1, 2]}),
        ):
            actions = client.infer(observation_)["actions"]
            assert np.isfinite(actions).all() and actions.shape == (TINY_HORIZON, 7)


def test_a_camera_at_another_aspect_ratio_is_an_invalid_observation(server) -> None:
    """Resizing a 4:3 frame into a square policy would distort the scene: refused, naming the
    key and both shapes, as an observation error (not a model failure), and serving goes on."""
    wide = obs(8, **{"observation.images.wrist": np.zeros((48, 64, 3), dtype=np.uint8)})
    with PolicyClient(uri(server)) as client:
        with pytest.raises(ServerError, match=r"observation.images.wrist.*\(48, 64, 3\)") as error:
            client.infer(wide)
        assert error.value.type == protocol.INVALID_OBSERVATION
        assert np.isfinite(client.infer(obs(8))["actions"]).all()


def test_a_model_producing_nan_gets_an_error_reply_not_nan_actions(tiny_checkpoint) -> None:
    broken = VLAPolicy.from_pretrained(tiny_checkpoint)
    with torch.no_grad():
        next(broken.model.parameters()).fill_(float("nan"))
    with running(broken) as server, PolicyClient(uri(server)) as client:
        with pytest.raises(ServerError, match="non-finite actions") as error:
            client.infer(obs(9))
        assert error.value.type == protocol.UNSAFE_ACTIONS
        with pytest.raises(ServerError):  # the connection stays usable
            client.infer(obs(9))


# ====================================================================================== concurrency
def hammer(address: str, clients: int, seconds: float) -> tuple[list[int], list[str]]:
    """`clients` threads, each with its own connection, inferring back to back for `seconds`."""
    counts, errors = [0] * clients, []
    stop = time.monotonic() + seconds

    def work(index: int) -> None:
        try:
            with PolicyClient(address) as client:
                while time.monotonic() < stop:
                    actions = client.infer(obs(index))["actions"]
                    if actions.shape != (TINY_HORIZON, 7) or not np.isfinite(actions).all():
                        errors.append(f"client {index}: bad actions {actions.shape}")
                    counts[index] += 1
        except Exception as error:  # every failure counts
            errors.append(f"client {index}: {type(error).__name__}: {error}")

    threads = [threading.Thread(target=work, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    return counts, errors


def test_eight_concurrent_clients_are_batched_without_errors(policy) -> None:
    with running(policy, max_batch=8, max_wait_ms=20) as server:
        counts, errors = hammer(uri(server), clients=8, seconds=3.0)
        stats = server.server.stats
    assert errors == [] and min(counts) >= 1, (errors, counts)
    assert sum(size * n for size, n in stats.batch_sizes.items()) == sum(counts) == stats.replies
    assert max(stats.batch_sizes) > 1, f"no request was batched: {stats.batch_sizes}"
    assert stats.forward_passes < sum(counts)

    with running(policy, max_batch=1) as unbatched:
        counts, errors = hammer(uri(unbatched), clients=8, seconds=1.5)
        stats = unbatched.server.stats
    assert errors == [] and min(counts) >= 1
    assert set(stats.batch_sizes) == {1} and stats.forward_passes == sum(counts)


def test_client_disconnecting_mid_request_is_harmless(server) -> None:
    stats = server.server.stats
    internal_before = stats.errors[protocol.INTERNAL]
    for index in range(6):
        with connect(uri(server), compression=None, close_timeout=1) as ws:
            ws.recv(timeout=10)
            ws.send(packb(obs(10 + index)))
            if index % 2 == 0:  # the robot's process died: the TCP connection just drops
                ws.socket.shutdown(socket.SHUT_RDWR)
        # (odd indices: a clean close handshake while the request is queued)
    time.sleep(0.5)  # let the orphaned requests finish on the server
    with PolicyClient(uri(server)) as client:
        assert client.infer(obs(20))["actions"].shape == (TINY_HORIZON, 7)
    assert server.alive and stats.errors[protocol.INTERNAL] == internal_before


def test_two_request_keys_landing_on_one_of_ours_are_refused_naming_both() -> None:
    """The wire check renames with the processor's own renamer (data.schema.rename_keys), so a
    robot key and our key that collide are an InvalidObservation naming both, never a silent drop."""
    spec = RequestSpec(
        image_keys=("observation.images.agentview",),
        state_dim=8,
        key_map={"image": "observation.images.agentview"},
    )
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    request = {
        "image": image,
        "observation.images.agentview": image,
        "observation.state": np.zeros(8, np.float32),
        "task": "t",
    }
    pattern = "keys 'image' and 'observation.images.agentview' both map to"
    with pytest.raises(InvalidObservation, match=pattern):
        spec.validate(request)
    del request["observation.images.agentview"]
    observation, _ = spec.validate(request)
    assert set(observation) >= {"observation.images.agentview", "observation.state", "task"}
