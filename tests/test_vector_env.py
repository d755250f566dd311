"""SubprocVectorEnv: parallel results match serial ones, and every kind of worker crash is
reported, counted and replaced instead of being fatal or silently dropped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from conftest import assert_children_end, child_pids
from gymnasium import spaces

from sim.vector import EnvCrashedError, EnvResult, SubprocVectorEnv, make_vector_env

# Spawned workers import this module; a hang must fail the test rather than stall the suite.
pytestmark = pytest.mark.timeout(60)

IMAGE = (8, 8, 3)
REPO = Path(__file__).resolve().parents[1]


class FaultyEnv(gym.Env):
    """A tiny deterministic env with the vla observation dict and an optional fault at step N."""

    metadata = {"render_modes": []}

    def __init__(
        self, task: str = "stack the cubes", fault: str | None = None, fault_step: int = 0
    ) -> None:
        self.task = task
        self.fault = fault
        self.fault_step = fault_step
        self.observation_space = spaces.Dict(
            {
                "observation.images.agentview": spaces.Box(0, 255, IMAGE, np.uint8),
                "observation.images.wrist": spaces.Box(0, 255, IMAGE, np.uint8),
                "observation.state": spaces.Box(-np.inf, np.inf, (8,), np.float32),
                "task": spaces.Text(256),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (7,), np.float32)
        self._t = 0
        self._state = np.zeros(8, np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict | None = None
    ) -> tuple[dict[str, Any], dict]:
        super().reset(seed=seed)
        if options and options.get("init_state") is not None:
            self._np_random = np.random.default_rng(1000 + options["init_state"])
        self._t = 0
        self._state = self.np_random.normal(size=8).astype(np.float32)
        return self._obs(), {"t": 0}

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict]:
        self._t += 1
        if self._t == self.fault_step:
            self._trigger_fault()
        noise = self.np_random.normal(scale=0.01, size=8).astype(np.float32)
        self._state = self._state + 0.1 * np.append(action, 0.0).astype(np.float32) + noise
        terminated = self._t >= 5
        reward = float(-np.abs(self._state).sum())
        return self._obs(), reward, terminated, False, {"t": self._t, "success": terminated}

    def get_task(self) -> str:
        return self.task

    def close(self) -> None:
        if self.fault == "hang_on_close":
            time.sleep(60)

    def _obs(self) -> dict[str, Any]:
        images = self.np_random.integers(0, 256, (2, *IMAGE), dtype=np.uint8)
        return {
            "observation.images.agentview": images[0],
            "observation.images.wrist": images[1],
            "observation.state": self._state.copy(),
            "task": self.task,
        }

    def _trigger_fault(self) -> None:
        if self.fault == "raise":
            raise RuntimeError(f"boom at step {self._t}")
        if self.fault == "exit":
            os._exit(1)
        if self.fault == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        if self.fault == "sleep":
            time.sleep(60)


def make_env(
    task: str = "stack the cubes", fault: str | None = None, fault_step: int = 0
) -> gym.Env:
    return FaultyEnv(task, fault, fault_step)


def make_env_for_index(index: int) -> gym.Env:
    return FaultyEnv(task=f"task {index}")


def make_broken_env() -> gym.Env:
    raise ValueError("no EGL display")


class BusyEnv(FaultyEnv):
    """Announces its worker's pid in `marker_dir` at the first step, then works on it for ten
    minutes: a worker that never reads its pipe, so only a parent-death check can end it."""

    def __init__(self, marker_dir: str) -> None:
        super().__init__()
        self.marker_dir = Path(marker_dir)

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict]:
        (self.marker_dir / str(os.getpid())).touch()
        time.sleep(600)
        return super().step(action)


def make_busy_env(marker_dir: str) -> gym.Env:
    return BusyEnv(marker_dir)


ACTIONS = np.random.default_rng(0).uniform(-1, 1, (4, 7)).astype(np.float32)


def assert_same_obs(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert a[key].dtype == b[key].dtype
            np.testing.assert_array_equal(a[key], b[key])
        else:
            assert a[key] == b[key]


def assert_ok(result: EnvResult) -> None:
    assert not result.crashed, result.error
    assert result.error is None and result.obs is not None


def test_results_match_serial_envs() -> None:
    tasks = ["a", "b", "c"]
    seeds = [3, 4, None]
    options = [None, None, {"init_state": 7}]
    serial = [make_env(task) for task in tasks]
    with SubprocVectorEnv([partial(make_env, task) for task in tasks]) as venv:
        assert venv.num_envs == 3
        results = venv.reset(range(3), seeds=seeds, options=options)
        for env, result, seed, opts in zip(serial, results, seeds, options, strict=True):
            assert_ok(result)
            obs, info = env.reset(seed=seed, options=opts)
            assert_same_obs(result.obs, obs)
            assert result.info == info
        for action in ACTIONS:
            stepped = venv.step({i: action for i in range(3)})
            assert list(stepped) == [0, 1, 2]
            for i, env in enumerate(serial):
                obs, reward, terminated, truncated, info = env.step(action)
                assert_ok(stepped[i])
                assert_same_obs(stepped[i].obs, obs)
                assert (stepped[i].reward, stepped[i].terminated, stepped[i].truncated) == (
                    reward,
                    terminated,
                    truncated,
                )
                assert stepped[i].info == info
        assert venv.call(1, "get_task") == "b"
        assert venv.call(2, "task") == "c"  # attributes are read, not called
        assert venv.crash_count == 0


def test_only_given_indices_step() -> None:
    with make_vector_env(3, make_env_for_index) as venv:
        assert all(not r.crashed for r in venv.reset([0, 1, 2], seeds=[0, 1, 2]))
        first = venv.step({2: ACTIONS[0], 0: ACTIONS[0]})
        assert list(first) == [2, 0]  # in the caller's order
        assert {i: r.info["t"] for i, r in first.items()} == {2: 1, 0: 1}
        assert venv.step({1: ACTIONS[1]})[1].info["t"] == 1
        everyone = venv.step({i: ACTIONS[2] for i in range(3)})
        assert {i: r.info["t"] for i, r in everyone.items()} == {0: 2, 1: 2, 2: 2}
        assert venv.call(2, "get_task") == "task 2"
        with pytest.raises(IndexError):
            venv.step({3: ACTIONS[0]})
        with pytest.raises(ValueError):
            venv.reset([0], seeds=[1, 2])
    assert not any(process.is_alive() for process in venv.processes)


def test_raised_exception_is_reported_and_env_replaced() -> None:
    fns = [partial(make_env, "a", "raise", 2), partial(make_env, "b")]
    with SubprocVectorEnv(fns) as venv:
        venv.reset([0, 1], seeds=[5, 6])
        old_pid = venv.processes[0].pid
        assert_ok(venv.step({0: ACTIONS[0], 1: ACTIONS[0]})[0])
        stepped = venv.step({0: ACTIONS[1], 1: ACTIONS[1]})
        assert stepped[0].crashed and stepped[0].obs is None
        assert "RuntimeError: boom at step 2" in stepped[0].error
        assert_ok(stepped[1])  # the healthy env in the same call is unaffected
        assert venv.crash_log == [(0, stepped[0].error)]
        assert venv.processes[0].pid != old_pid

        # The replacement must be reset first: a clear error, not a hang, and not a crash.
        not_reset = venv.step({0: ACTIONS[2]})[0]
        assert not_reset.crashed and "must be reset" in not_reset.error
        assert venv.crash_count == 1

        [result] = venv.reset([0], seeds=[9])
        serial = make_env("a")
        obs, _ = serial.reset(seed=9)
        assert_ok(result)
        assert_same_obs(result.obs, obs)
        stepped = venv.step({0: ACTIONS[3]})[0]
        assert_ok(stepped)
        assert_same_obs(stepped.obs, serial.step(ACTIONS[3])[0])


def test_process_death_is_reported_and_replaced() -> None:
    fns = [partial(make_env, "a", "exit", 1), partial(make_env, "b", "segv", 1), make_env]
    with SubprocVectorEnv(fns) as venv:
        venv.reset(range(3))
        old = venv.processes
        stepped = venv.step({i: ACTIONS[0] for i in range(3)})
        for index, expected in [(0, "exit code 1"), (1, "exit code -11 (SIGSEGV)")]:
            assert stepped[index].crashed and stepped[index].obs is None
            assert "died during step" in stepped[index].error
            assert expected in stepped[index].error
            assert not old[index].is_alive() and venv.processes[index] is not old[index]
        assert_ok(stepped[2])
        assert venv.processes[2] is old[2]
        assert sorted(venv.crash_log) == [(0, stepped[0].error), (1, stepped[1].error)]
        assert all(not result.crashed for result in venv.reset([0, 1]))
        assert venv.call(0, "get_task") == "a"


def test_timeout_is_reported_and_replaced() -> None:
    with SubprocVectorEnv([partial(make_env, "a", "sleep", 1)], step_timeout=0.5) as venv:
        venv.reset([0])
        old = venv.processes[0]
        [(index, result)] = venv.step({0: ACTIONS[0]}).items()
        assert index == 0 and result.crashed
        assert "timed out" in result.error
        assert not old.is_alive()
        assert venv.crash_log == [(0, result.error)]
        assert_ok(venv.reset([0])[0])


def test_crash_count_and_log_over_several_crashes() -> None:
    fns = [
        partial(make_env, "a", "raise", 1),
        partial(make_env, "b"),
        partial(make_env, "c", "exit", 1),
    ]
    with SubprocVectorEnv(fns) as venv:
        venv.reset(range(3))
        stepped = venv.step({i: ACTIONS[0] for i in range(3)})
        assert [stepped[i].crashed for i in range(3)] == [True, False, True]
        assert venv.crash_count == 2
        assert sorted(venv.crash_log) == [(0, stepped[0].error), (2, stepped[2].error)]
        # The replacements fault again at their step 1: each crash is counted once more.
        venv.reset([0, 2])
        venv.step({0: ACTIONS[1], 2: ACTIONS[1]})
        assert venv.crash_count == 4
        assert sorted(i for i, _ in venv.crash_log) == [0, 0, 2, 2]


def test_env_construction_failure_is_a_crash() -> None:
    with SubprocVectorEnv([make_broken_env]) as venv:
        [result] = venv.reset([0])
        assert result.crashed and "ValueError: no EGL display" in result.error
        assert venv.crash_count == 1


def test_call_errors_keep_the_env() -> None:
    with SubprocVectorEnv([partial(make_env, "a"), partial(make_env, "b", "exit", 1)]) as venv:
        pid = venv.processes[0].pid
        with pytest.raises(RuntimeError, match="no_such_method"):
            venv.call(0, "no_such_method")
        assert venv.processes[0].pid == pid and venv.crash_count == 0
        venv.reset([1])
        with pytest.raises(EnvCrashedError, match="exit code 1"):
            venv.call(1, "step", ACTIONS[0])
        assert venv.crash_count == 1


@dataclass(frozen=True)
class GetTask:
    """A typed worker command: reads the env's task."""

    def __call__(self, env: gym.Env) -> str:
        return env.get_task()


@dataclass(frozen=True)
class Step:
    action: np.ndarray

    def __call__(self, env: gym.Env) -> tuple:
        return env.step(self.action)


def test_run_each_runs_in_every_worker_and_treats_failures_as_crashes() -> None:
    with SubprocVectorEnv([partial(make_env, "a"), partial(make_env, "b", "raise", 1)]) as venv:
        fresh = venv.run_each({0: GetTask(), 1: GetTask()})
        assert all(isinstance(reply, EnvResult) and reply.crashed for reply in fresh.values())
        assert "must be reset before GetTask" in fresh[0].error and venv.crash_count == 0
        venv.reset([0, 1])
        assert venv.run_each({1: GetTask(), 0: GetTask()}) == {1: "b", 0: "a"}
        replies = venv.run_each({0: Step(ACTIONS[0]), 1: Step(ACTIONS[0])})
        assert replies[0][4] == {"t": 1, "success": False}
        assert replies[1].crashed and "boom at step 1" in replies[1].error
        assert venv.crash_count == 1


def test_close_terminates_workers_and_is_idempotent() -> None:
    venv = SubprocVectorEnv(
        [partial(make_env, "a"), partial(make_env, "b", "hang_on_close")], close_timeout=0.5
    )
    venv.reset([0, 1])
    processes = venv.processes
    assert all(process.is_alive() for process in processes)
    venv.close()
    assert not any(process.is_alive() for process in processes)
    venv.close()
    with pytest.raises(RuntimeError, match="closed"):
        venv.step({0: ACTIONS[0]})


def test_interrupted_step_does_not_desynchronise_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    serial = make_env("a")
    with SubprocVectorEnv([partial(make_env, "a")]) as venv:
        venv.reset([0], seeds=[1])
        with monkeypatch.context() as patch:
            patch.setattr(venv, "_receive", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
            with pytest.raises(KeyboardInterrupt):
                venv.step({0: ACTIONS[0]})
        # The unread step reply must not be taken as the answer to this reset.
        [result] = venv.reset([0], seeds=[2])
        assert_ok(result)
        assert_same_obs(result.obs, serial.reset(seed=2)[0])
        assert venv.crash_count == 0


@pytest.mark.timeout(180)
def test_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    """SIGKILL of the process holding a SubprocVectorEnv (no close, no atexit) ends its workers,
    even ones busy in a long step that would never read the closed pipe."""
    markers = tmp_path / "markers"
    markers.mkdir()
    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / "tests")!r}]
        from functools import partial
        import numpy as np
        from sim.vector import SubprocVectorEnv
        from test_vector_env import make_busy_env
        venv = SubprocVectorEnv([partial(make_busy_env, {str(markers)!r})] * 2, step_timeout=None)
        venv.reset([0, 1])
        venv.step({{0: np.zeros(7, np.float32), 1: np.zeros(7, np.float32)}})
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    children: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(list(markers.iterdir())) < 2 and time.monotonic() < deadline:
            assert parent.poll() is None, "the parent script failed before its workers stepped"
            time.sleep(0.2)
        workers = sorted(int(marker.name) for marker in markers.iterdir())
        assert len(workers) == 2, "the workers never started their step"
        children = child_pids(parent.pid)
        assert set(workers) <= set(children)
    finally:
        parent.kill()
        parent.wait()
    assert_children_end(children, f"parent {parent.pid}")
