"""The robot side (`vla.robot`): chunk stitching, the safety layer, the controller's watchdog,
and the demo (deploy_demo.py) with the simulator standing in for the robot, talking to a server
process over loopback."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import (
    TINY_RESOLUTION,
    UNTRAINED_ACTION_MARGIN,
    observation,
    running,
    save_tiny_checkpoint,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vla.cli import start_server_process, stop_server_process
from vla.policy import VLAPolicy
from vla.robot import (
    ChunkStitcher,
    Controller,
    ControllerConfig,
    PolicyClient,
    Rate,
    SafetyConfig,
    SafetyLayer,
    StitchConfig,
    default_n_action_steps,
)
from vla.robot.controller import (
    BEFORE_STOP,
    DEADLINE,
    NO_PLAN,
    PLAN,
    STOPPED,
    TOO_OLD,
    WAITING,
)

REPO = Path(__file__).resolve().parents[1]
IMAGE = TINY_RESOLUTION[0]  # camera resolution of the test observations (as trained)


# ====================================================================================== stitching
def constant_chunk(value: float, horizon: int = 8) -> np.ndarray:
    return np.full((horizon, 7), value)


def plan_values(stitcher: ChunkStitcher, steps: range) -> list[float | None]:
    return [
        None if (a := stitcher.action(step)) is None else round(float(a[0]), 6) for step in steps
    ]


def test_stale_prefix_is_dropped_and_the_plan_is_aligned_to_steps() -> None:
    stitcher = ChunkStitcher(StitchConfig("replace"))
    chunk = np.arange(8, dtype=np.float64)[:, None].repeat(7, 1) + 10  # action i = 10 + i
    assert stitcher.add(chunk, obs_step=10, now=13) == 3  # computed at 10, arrives at 13
    assert plan_values(stitcher, range(12, 19)) == [None, 13, 14, 15, 16, 17, None]
    assert stitcher.remaining(13) == 5 and stitcher.remaining(18) == 0
    assert stitcher.add(chunk, obs_step=2, now=13) == 8, "all stale: ignored"
    assert plan_values(stitcher, range(13, 14)) == [13]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (StitchConfig("replace"), [0, 1, 1, 1, 1, 1]),
        (StitchConfig("freeze", freeze_steps=2), [0, 0, 0, 1, 1, 1]),
        (StitchConfig("blend", blend_steps=4), [0, 0.2, 0.4, 0.6, 0.8, 1]),
        (StitchConfig("blend", blend_steps=0), [0, 1, 1, 1, 1, 1]),
    ],
)
def test_stitch_modes_at_the_seam(config: StitchConfig, expected: list[float]) -> None:
    stitcher = ChunkStitcher(config)
    stitcher.add(constant_chunk(0.0), obs_step=0, now=0)
    stitcher.add(constant_chunk(1.0), obs_step=0, now=1)  # new plan arrives at step 1
    assert plan_values(stitcher, range(0, 6))[1:] == expected[1:]
    assert stitcher.action(0) is None, "step 0 is in the past once the new plan starts at 1"


@settings(max_examples=60, deadline=None)
@given(
    old=hnp.arrays(np.float64, (8, 7), elements=st.floats(-1, 1)),
    new=hnp.arrays(np.float64, (8, 7), elements=st.floats(-1, 1)),
    delay=st.integers(0, 3),
    blend=st.integers(1, 4),
)
def test_blending_never_jumps_more_than_the_gap_allows(old, new, delay, blend) -> None:
    """The cross-fade moves at most gap / (blend + 1) per step beyond the plans' own motion."""
    stitcher = ChunkStitcher(StitchConfig("blend", blend_steps=blend))
    stitcher.add(old, 0, 0)
    stitcher.add(new, 0, delay)
    overlap = min(blend, 8 - delay)
    actions = np.stack([stitcher.action(step) for step in range(delay, 8)])  # (8 - delay, 7)
    previous = old[delay - 1] if delay else None
    for index in range(overlap):
        weight = (index + 1) / (overlap + 1)
        expected = (1 - weight) * old[delay + index] + weight * new[delay + index]
        np.testing.assert_allclose(actions[index], expected, atol=1e-12)
    np.testing.assert_array_equal(actions[overlap:], new[delay + overlap :])
    if previous is not None:  # first command after the seam: a 1/(overlap+1) step toward new
        gap = np.abs(new[delay] - old[delay])
        assert (np.abs(actions[0] - old[delay]) <= gap / (overlap + 1) + 1e-12).all()


# ====================================================================================== safety
LIMITS = SafetyConfig(
    low=(-0.5, -0.5, -0.2, -0.3, -0.3, -0.3, -1.0),
    high=(0.5, 0.4, 0.2, 0.3, 0.3, 0.3, 1.0),
    max_step_change=(0.1, 0.1, 0.05, 0.2, 0.2, 0.2, 2.0),
)
adversarial = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, np.nan, np.inf, -np.inf, 5e-324, -0.0]),
)


@settings(max_examples=300, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 40), st.just(7)), elements=adversarial))
def test_commands_stay_within_limits_and_rate_for_adversarial_actions(actions) -> None:
    safety = SafetyLayer(LIMITS)
    low, high = np.array(LIMITS.low), np.array(LIMITS.high)
    change = np.array(LIMITS.max_step_change)
    previous = safety.last.copy()
    for action in actions:
        command, usable = safety.limit(action)
        assert np.isfinite(command).all()
        assert (command >= low).all() and (command <= high).all()
        if usable:
            assert (np.abs(command - previous) <= change + 1e-12).all()
        else:  # any NaN/Inf: the safe action (zero motion, gripper held)
            assert not np.isfinite(action).all()
            np.testing.assert_array_equal(command, [0, 0, 0, 0, 0, 0, previous[6]])
        previous = command


def test_rate_limit_ramps_toward_a_far_target_and_gripper_may_flip() -> None:
    safety = SafetyLayer(LIMITS)
    target = np.array([10, 10, 10, 10, 10, 10, 1.0])
    commands = np.stack([safety.limit(target)[0] for _ in range(6)])
    np.testing.assert_allclose(commands[:, 0], [0.1, 0.2, 0.3, 0.4, 0.5, 0.5])  # ramp, then limit
    np.testing.assert_allclose(commands[:, 2], [0.05, 0.1, 0.15, 0.2, 0.2, 0.2])
    assert commands[0, 6] == 1.0, "the gripper closes in one step (max change 2)"
    np.testing.assert_array_equal(safety.safe(), [0, 0, 0, 0, 0, 0, 1.0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"low": (0.1,) * 7}, "safe action"),
        ({"low": (1.0,) * 7, "high": (-1.0,) * 7}, "low <= high"),
        ({"max_step_change": (0.0,) * 7}, "must be > 0"),
        ({"low": (-1.0,) * 6}, "one value per action dimension"),
        ({"initial_gripper": 3.0}, "outside the gripper limits"),
    ],
)
def test_safety_config_is_validated(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SafetyConfig(**kwargs)


# ====================================================================================== controller
class ScriptedServer:
    """The network side, answered by the test thread: requests wait until the test replies.

    Lets the test decide exactly at which control step each chunk arrives; every real-network
    behaviour is covered by the tests that run `vla serve`.
    """

    horizon = 16
    metadata = {"action_horizon": horizon, "action_dim": 7}

    def __init__(self) -> None:
        self.requests: queue.Queue[tuple[dict[str, Any], queue.Queue[Any]]] = queue.Queue()
        self.outstanding: list[queue.Queue[Any]] = []

    def infer(self, observation: dict[str, Any]) -> dict[str, Any]:
        box: queue.Queue[Any] = queue.Queue()
        self.outstanding.append(box)
        self.requests.put((observation, box))
        reply = box.get(timeout=30)
        if isinstance(reply, Exception):
            raise reply
        return {"actions": reply}

    def close(self) -> None:
        for box in self.outstanding:
            box.put(ConnectionError("closed"))


def test_controller_aligns_chunks_to_steps_and_trips_the_watchdog_in_ticks() -> None:
    """Each chunk's action for step t is 0.01 t, so a correctly aligned plan commands 0.01 t."""
    server, clock = ScriptedServer(), [0.0]
    config = ControllerConfig(
        control_hz=20, replan_every=3, deadline_s=0.2, stitch=StitchConfig("replace")
    )
    controller = Controller(server, config, clock=lambda: clock[0])
    replied = [0]

    def tick() -> tuple[str, np.ndarray]:
        action = controller.act({"step": controller.step})
        clock[0] += 0.05  # one control period
        return controller.ticks[-1].source, action

    def outstanding() -> bool:
        return controller.stats.requests > replied[0]

    def reply() -> None:
        """Answer the outstanding request now (it arrives before the next tick)."""
        observation, box = server.requests.get(timeout=10)
        replied[0] += 1
        start = observation["step"]
        box.put((np.arange(start, start + server.horizon) * 0.01)[:, None].repeat(7, 1))
        deadline = time.monotonic() + 10
        while controller.chunks_waiting() == 0 and time.monotonic() < deadline:
            time.sleep(0.001)

    sources = [tick()[0] for _ in range(3)]  # steps 0-2: no chunk yet
    assert sources == [WAITING] * 3 and controller.stats.requests == 1
    reply()  # the chunk computed at step 0 arrives at step 3
    for _ in range(12):
        source, action = tick()
        assert source == PLAN
        np.testing.assert_allclose(action[:6], 0.01 * (controller.step - 1))
        if outstanding() and controller.step % 2 == 0:
            reply()  # 1-2 ticks of latency
    assert controller.stats.chunks >= 4 and controller.stats.latency_steps[0] == 3

    # the server goes silent: the first tick more than deadline_s after the last fresh chunk
    # commands the safe stop; the plan still had actions left
    last = controller.stats.arrivals[-1]
    results = [(clock[0], *tick()) for _ in range(server.horizon + 4)]
    first_late = next(index for index, (time_, _, _) in enumerate(results) if time_ - last > 0.2)
    assert all(source == PLAN for _, source, _ in results[:first_late])
    for _, source, action in results[first_late:]:
        assert source == DEADLINE
        np.testing.assert_array_equal(action[:6], 0.0)
    assert controller.stitcher.remaining(controller.step - len(results) + first_late) > 0

    # a reply whose actions are all in the past does not count as fresh
    reply()
    assert tick()[0] == DEADLINE and controller.stats.stale_chunks == 1
    for _ in range(4):  # a fresh chunk restarts motion
        tick()
        if outstanding():
            reply()
    assert tick()[0] == PLAN
    safe = controller.shutdown()
    assert not controller.worker_alive
    np.testing.assert_array_equal(safe[:6], 0.0)


class ScriptedLoop:
    """A controller on a ScriptedServer with a fake clock: one `tick` is one 20 Hz period."""

    def __init__(self, **config: Any) -> None:
        self.server, self.clock = ScriptedServer(), [0.0]
        self.controller = Controller(
            self.server,
            ControllerConfig(control_hz=20, stitch=StitchConfig("replace"), **config),
            clock=lambda: self.clock[0],
        )

    def tick(self, stamp: float | None = None) -> tuple[str, np.ndarray]:
        action = self.controller.act({"step": self.controller.step}, stamp=stamp)
        self.clock[0] += 0.05
        return self.controller.ticks[-1].source, action

    def reply(self, value: float = 0.1) -> None:
        """Answer the oldest outstanding request with a constant chunk; wait until it is in."""
        _, box = self.server.requests.get(timeout=10)
        before = self.controller.stats.chunks + self.controller.stats.stale_chunks
        waiting = self.controller.chunks_waiting()
        box.put(np.full((self.server.horizon, 7), value))
        deadline = time.monotonic() + 10
        while self.controller.chunks_waiting() == waiting and time.monotonic() < deadline:
            time.sleep(0.001)
        assert self.controller.stats.chunks + self.controller.stats.stale_chunks == before


def test_after_a_watchdog_stop_a_chunk_from_before_the_stop_never_moves_the_arm() -> None:
    """The review's attack: the server freezes, the watchdog stops the arm, then the reply to
    the request sent before the freeze arrives (its observation 2 s old). Before the fix it
    resumed motion; now only a chunk computed from a post-stop observation does."""
    loop = ScriptedLoop(replan_every=100, deadline_s=0.5)
    controller = loop.controller
    assert loop.tick()[0] == WAITING
    loop.reply(0.1)
    assert loop.tick()[0] == PLAN  # moving on the first chunk
    loop.clock[0] += 0.1  # ... the next request goes out (forced by a retry below)
    controller._retry = True  # noqa: SLF001 - the request that will arrive 2 s late
    assert loop.tick()[0] == PLAN
    request_time = loop.clock[0] - 0.05
    for _ in range(40):  # 2 s of silence: the watchdog stops the arm
        source, action = loop.tick()
    assert source == DEADLINE and controller.stats.watchdog_stops == 1
    np.testing.assert_array_equal(action[:6], 0.0)
    assert loop.clock[0] - request_time > 2.0
    loop.reply(0.3)  # the late reply to the pre-stop observation
    source, action = loop.tick()
    assert source == DEADLINE, "a chunk from before the stop resumed motion"
    np.testing.assert_array_equal(action[:6], 0.0)
    assert controller.stats.stale_reasons[BEFORE_STOP] == 1
    # that tick asked again at once, with its own (post-stop) observation: that one may move
    loop.reply(0.5)
    source, action = loop.tick()
    assert source == PLAN and action[0] == pytest.approx(0.5)
    controller.shutdown()


def test_a_chunk_whose_observation_is_too_old_is_dropped_by_its_stamp_not_its_arrival() -> None:
    loop = ScriptedLoop(replan_every=100, deadline_s=0.5, max_chunk_age_s=0.3)
    # the robot's camera frame was taken 0.4 s before the tick that sends it
    loop.tick(stamp=loop.clock[0] - 0.4)
    loop.reply()
    assert loop.tick()[0] == WAITING, "a chunk of a 0.45 s old observation was used"
    assert loop.controller.stats.stale_reasons[TOO_OLD] == 1
    loop.reply()  # asked again at once with a fresh stamp
    assert loop.tick()[0] == PLAN
    loop.controller.shutdown()


def test_reset_between_episodes_never_replays_the_last_episodes_chunk() -> None:
    loop = ScriptedLoop(replan_every=100, deadline_s=0.5)
    controller = loop.controller
    loop.tick()
    loop.reply(0.2)
    assert loop.tick() == (PLAN, pytest.approx(np.full(7, 0.2)))
    controller._retry = True  # noqa: SLF001 - a request of episode 1 is in flight at its end
    loop.tick()
    deadline = time.monotonic() + 10
    while loop.server.requests.qsize() == 0 and time.monotonic() < deadline:
        time.sleep(0.001)  # the worker has sent it
    controller.reset()
    assert controller.step == 0
    source, action = loop.tick()  # episode 2, step 0: no plan yet
    assert source == WAITING
    np.testing.assert_array_equal(action, np.r_[np.zeros(6), -1.0])  # safety state reset too
    _, box = loop.server.requests.get(timeout=10)  # episode 1's request answers late
    box.put(np.full((loop.server.horizon, 7), 0.2))
    deadline = time.monotonic() + 10
    while controller._in_flight and time.monotonic() < deadline:  # noqa: SLF001
        time.sleep(0.001)
    assert controller.chunks_waiting() == 0, "episode 1's reply was kept"
    for _ in range(3):
        assert loop.tick()[0] == WAITING
    controller.shutdown()


def test_shutdown_returns_in_time_when_closing_the_client_blocks() -> None:
    """A client whose close() hangs (as a websocket blocked mid-send did) cannot hold shutdown;
    every tick after it is the safe action."""

    class HangingClient(InstantServer):
        def close(self) -> None:
            time.sleep(30)

    controller = Controller(HangingClient(8), ControllerConfig())
    controller.act({})
    finished: list[np.ndarray] = []
    thread = threading.Thread(target=lambda: finished.append(controller.shutdown(timeout=0.5)))
    thread.start()
    thread.join(20)
    assert finished, "shutdown() did not return"
    np.testing.assert_array_equal(finished[0][:6], 0.0)
    assert controller.act({})[:6].tolist() == [0.0] * 6
    assert controller.ticks[-1].source == STOPPED


class InstantServer:
    """Answers every request at once with a zero chunk of `horizon` actions."""

    def __init__(self, horizon: int) -> None:
        self.metadata = {"action_horizon": horizon, "action_dim": 7}

    def infer(self, observation: dict[str, Any]) -> dict[str, Any]:
        return {"actions": np.zeros((int(self.metadata["action_horizon"]), 7))}

    def close(self) -> None:
        pass


@pytest.mark.parametrize("horizon", [1, 7, 10])
def test_by_default_the_controller_replans_on_the_chunkers_receding_horizon(horizon) -> None:
    """Requests go out every default_n_action_steps(H) steps, as evaluation replans in sim."""
    controller = Controller(InstantServer(horizon), ControllerConfig())
    request_steps = []
    for step in range(24):
        before = controller.stats.requests
        controller.act({})
        if controller.stats.requests > before:
            request_steps.append(step)
            deadline = time.monotonic() + 10
            while controller.chunks_waiting() == 0 and time.monotonic() < deadline:
                time.sleep(0.001)  # the reply is in before the next tick
    controller.shutdown()
    assert request_steps == list(range(0, 24, default_n_action_steps(horizon)))


def test_watchdog_stops_motion_within_one_period_when_the_server_process_is_paused(
    tiny_checkpoint,
) -> None:
    """`vla serve` in a child process, frozen with SIGSTOP while the controller runs at 20 Hz."""
    process, address = start_server_process(
        tiny_checkpoint, extra_args=["--action-range-margin", str(UNTRAINED_ACTION_MARGIN)]
    )
    hz, deadline = 20.0, 0.25
    controller = None
    try:
        controller = Controller(
            PolicyClient(address),
            ControllerConfig(control_hz=hz, replan_every=2, deadline_s=deadline),
        )
        robot_obs = observation(0, size=IMAGE)
        controller.start(robot_obs)
        rate = Rate(hz)

        def run(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                controller.act(robot_obs)
                rate.sleep()

        run(1.5)
        os.kill(process.pid, signal.SIGSTOP)
        paused = time.monotonic()
        run(1.0)
        os.kill(process.pid, signal.SIGCONT)
        resumed = time.monotonic()
        run(2.0)
    finally:
        if controller is not None:
            controller.shutdown()
        os.kill(process.pid, signal.SIGCONT)
        stop_server_process(process)
    assert not controller.worker_alive, "shutdown stops the inference thread"
    ticks = list(controller.ticks)
    before = [tick for tick in ticks if tick.time < paused]
    assert any(tick.source == PLAN for tick in before)
    assert any(np.abs(tick.action[:6]).max() > 0 for tick in before), "the arm was moving"

    last_fresh = max(arrival for arrival in controller.stats.arrivals if arrival < resumed)
    late = [tick for tick in ticks if last_fresh + deadline < tick.time < resumed]
    assert len(late) >= 2, "the control loop kept ticking while the server was frozen"
    # the first tick after the deadline (at most one period after it) commands the stop
    first_index = ticks.index(late[0])
    assert late[0].source == DEADLINE
    for tick in late:
        assert tick.source in (DEADLINE, NO_PLAN)
        np.testing.assert_array_equal(tick.action[:6], 0.0)
        assert tick.action[6] == ticks[first_index - 1].action[6], "gripper held"
    after = [tick for tick in ticks if tick.time > resumed]
    assert any(tick.source == PLAN for tick in after), "motion resumes with fresh chunks"


def test_start_reports_why_no_chunk_came(tiny_checkpoint) -> None:
    with running(VLAPolicy.from_pretrained(tiny_checkpoint)) as server:
        controller = Controller(PolicyClient(f"ws://127.0.0.1:{server.port}"), ControllerConfig())
        with pytest.raises(TimeoutError, match=r"lacks \['task'\]"):
            controller.start(
                {k: v for k, v in observation(0, size=IMAGE).items() if k != "task"}, timeout=1.0
            )
        assert controller.stats.request_errors >= 1
        controller.shutdown()
        assert not controller.worker_alive


# ====================================================================================== demo
def test_deploy_demo_runs_a_full_episode_through_server_and_controller(tmp_path) -> None:  # noqa: ANN001
    """The demo's simulated cameras take their resolution from the server's metadata (the
    checkpoint's spec): 48x64 here, which a square default would get refused for."""
    checkpoint = save_tiny_checkpoint(tmp_path / "wide", resolution=(48, 64))
    steps = 30
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "deploy_demo.py"),
            "--checkpoint",
            str(checkpoint),
            "--max-episode-steps",
            str(steps),
            "--hz",
            "10",
            "--json",
            "--action-range-margin",
            str(UNTRAINED_ACTION_MARGIN),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MUJOCO_GL": "egl"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert isinstance(report["success"], bool)
    assert report["task"] == "put the red cube on the plate"  # quickstart task 0
    # the episode ran to its end: success (terminated) or the step limit (truncated)
    assert (report["terminated"] and report["success"]) or (
        report["truncated"] and report["steps"] == steps
    )
    assert sum(report["sources"].values()) == report["steps"]
    assert report["sources"].get(PLAN, 0) > 0 and report["chunks"] >= 2
    assert report["request_errors"] == 0 and report["round_trip_ms_p50"] > 0
