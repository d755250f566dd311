"""The real LIBERO suites through `sim.make`: registry, observation contract, resets, episode end.

Simulating LIBERO costs ~0.3 s a step on a 2-core CPU (rendering dominates), so the whole file
builds two environments and takes a few dozen steps in all; the observations of one reset are
shared by the tests that only read them.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytestmark = pytest.mark.libero
pytest.importorskip("libero.libero", reason="needs the `libero` extra: pip install -e '.[libero]'")

from libero.libero import benchmark as libero_benchmark  # noqa: E402

import sim  # noqa: E402
from sim.base_env import checked_action  # noqa: E402
from sim.libero_env import (  # noqa: E402
    IMAGE_KEYS,
    SETTLE_STEPS,
    LiberoEnv,
    _benchmark,
    libero_task_names,
)

IMAGE_SIZE = (96, 128)  # not square, so a swapped height and width would show
INIT_STATE = 3
NO_OP = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)


def close_gripper_and_move(step: int) -> np.ndarray:
    return np.array([0.5, -0.3, 0.2, 0.0, 0.1, 0.0, 1.0 if step > 0 else -1.0], dtype=np.float32)


def axis_angle_to_matrix(axis_angle: np.ndarray) -> np.ndarray:
    """Rodrigues' formula, written here so the check does not reuse the code under test."""
    angle = float(np.linalg.norm(axis_angle))
    if angle < 1e-12:
        return np.eye(3)
    x, y, z = axis_angle / angle
    cross = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


@pytest.fixture(scope="module")
def spatial_env():
    env = sim.make("libero_spatial", 0, image_size=IMAGE_SIZE)
    yield env
    env.close()


@pytest.fixture(scope="module")
def first_episode(spatial_env):
    """Reset to INIT_STATE and take two steps; returns copies of what the tests compare."""
    reset_obs, reset_info = spatial_env.reset(options={"init_state": INIT_STATE})
    sim_state = spatial_env.libero_env.get_sim_state().copy()
    robosuite_steps = spatial_env.libero_env.env.timestep  # counts the settle steps too
    steps_after_reset = spatial_env.steps
    steps = [spatial_env.step(NO_OP) for _ in range(2)]
    return {
        "reset_obs": reset_obs,
        "reset_info": reset_info,
        "sim_state": sim_state,
        "robosuite_steps": robosuite_steps,
        "steps_after_reset": steps_after_reset,
        "steps": steps,
    }


# --------------------------------------------------------------------------- registry (no sim)
def test_registry_has_the_five_suites_with_published_lengths_and_libero_task_names():
    for suite, length in {
        "libero_spatial": 220,
        "libero_object": 280,
        "libero_goal": 300,
        "libero_10": 520,
        "libero_90": 400,
    }.items():
        assert sim.get_suite(suite).max_episode_steps == length
        names = sim.suite_tasks(suite)
        assert names == libero_task_names(suite)
        assert len(names) == (90 if suite == "libero_90" else 10) == len(set(names))
        benchmark = libero_benchmark.get_benchmark_dict()[suite]()  # LIBERO's own, not ours
        for index, name in enumerate(names):
            # The instruction itself, or (only where it repeats across scenes) with the scene appended.
            language = benchmark.get_task(index).language
            assert name == language or name.startswith(language + " (")
    assert "turn on the stove (KITCHEN_SCENE3)" in sim.suite_tasks("libero_90")


def test_unknown_task_or_suite_gets_a_did_you_mean():
    typo = "pick up the black bowl between the plate and the ramekin and place it on the plat"
    with pytest.raises(
        KeyError, match="did you mean 'pick up the black bowl between the plate and the ramekin"
    ):
        sim.make("libero_spatial", typo)
    with pytest.raises(KeyError, match="did you mean 'libero_spatial'"):
        sim.make("libero_spatail", 0)
    with pytest.raises(IndexError, match="0..9"):
        sim.make("libero_goal", 10)


def test_missing_extra_says_what_to_install(monkeypatch):
    for name in [name for name in sys.modules if name == "libero" or name.startswith("libero.")]:
        monkeypatch.setitem(sys.modules, name, None)  # a None entry makes `import` fail
    libero_task_names.cache_clear()
    _benchmark.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"pip install -e '\.\[libero\]'"):
            sim.make("libero_goal", 0)  # fails at reading the task names, before building anything
        with pytest.raises(ImportError, match=r"pip install -e '\.\[libero\]'"):
            LiberoEnv("libero_goal", 0)
    finally:
        libero_task_names.cache_clear()
        _benchmark.cache_clear()


# --------------------------------------------------------------------------- one environment
@pytest.mark.slow
def test_observations_follow_the_contract(spatial_env, first_episode):
    env = spatial_env
    assert env.task_description == sim.suite_tasks("libero_spatial")[0]
    assert (env.max_episode_steps, env.num_init_states, env.image_size) == (220, 50, IMAGE_SIZE)
    assert env.action_space.shape == (7,) and env.action_space.dtype == np.float32
    assert first_episode["reset_info"]["init_state"] == INIT_STATE
    # Reset stepped the simulator SETTLE_STEPS times, and they do not count as episode steps.
    assert first_episode["robosuite_steps"] == SETTLE_STEPS == 10
    assert first_episode["steps_after_reset"] == 0
    observations = [first_episode["reset_obs"]] + [result[0] for result in first_episode["steps"]]
    for obs in observations:
        assert set(obs) == {*IMAGE_KEYS, "observation.state", "task"}
        for key in IMAGE_KEYS:
            assert obs[key].shape == (*IMAGE_SIZE, 3) and obs[key].dtype == np.uint8
        assert (
            obs["observation.state"].shape == (8,) and obs["observation.state"].dtype == np.float32
        )
        assert obs["task"] == env.task_description
        assert env.observation_space.contains(obs)
    for _, reward, terminated, truncated, info in first_episode["steps"]:
        assert (reward, terminated, truncated, info) == (0.0, False, False, {"success": False})


@pytest.mark.slow
def test_malformed_actions_are_refused_by_the_shared_rule(spatial_env, first_episode):
    """The action rule of every sim env (sim/base_env.py, also checked on TabletopEnv in
    test_sim.py): the same error, and the simulator does not move. (Not compared against a live
    TabletopEnv here: closing its EGL context in this process breaks LIBERO's renderer.)"""
    steps, sim_state = spatial_env.steps, spatial_env.libero_env.get_sim_state().copy()
    for bad in (np.zeros(6), np.zeros((2, 7)), np.full(7, np.nan), np.r_[np.zeros(6), np.inf]):
        with pytest.raises(ValueError) as expected:
            checked_action(bad)
        with pytest.raises(ValueError, match="action must be 7 finite numbers") as error:
            spatial_env.step(bad)
        assert str(error.value) == str(expected.value)
    assert spatial_env.steps == steps
    np.testing.assert_array_equal(spatial_env.libero_env.get_sim_state(), sim_state)


@pytest.mark.slow
def test_state_is_eef_pose_and_fingers_and_images_are_upright(spatial_env, first_episode):
    obs, *_ = spatial_env.step(NO_OP)
    raw = spatial_env.raw_observation  # robosuite's own observation of the same step
    state = obs["observation.state"]
    np.testing.assert_allclose(state[:3], raw["robot0_eef_pos"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(state[6:], raw["robot0_gripper_qpos"], rtol=0, atol=1e-6)
    from robosuite.utils.transform_utils import quat2mat

    np.testing.assert_allclose(
        axis_angle_to_matrix(state[3:6].astype(np.float64)),
        quat2mat(raw["robot0_eef_quat"]),
        atol=1e-5,
    )
    for key, raw_key in IMAGE_KEYS.items():  # a 180-degree turn, not a flip of the rows
        np.testing.assert_array_equal(obs[key], raw[raw_key][::-1, ::-1])
    np.testing.assert_array_equal(spatial_env.render(), obs["observation.images.agentview"])
    # Seen upright, the wrist camera has the gripper's dark fingers at the bottom, the table on top.
    wrist = obs["observation.images.wrist"].astype(np.float64)
    rows = IMAGE_SIZE[0] // 8
    assert wrist[-rows:].mean() < wrist[:rows].mean() - 30


@pytest.mark.slow
def test_same_init_state_gives_the_same_start_even_after_a_closed_gripper(
    spatial_env, first_episode
):
    env = spatial_env
    for step in range(4):  # leave the gripper closed and the arm elsewhere
        env.step(close_gripper_and_move(step))
    caller_rng = np.random.get_state()[1].copy()
    obs, info = env.reset(options={"init_state": INIT_STATE})
    assert info["init_state"] == INIT_STATE and info["scene_seed"] is None
    # The fixture jitter's seeding leaves the caller's global RNG as it was.
    np.testing.assert_array_equal(np.random.get_state()[1], caller_rng)
    first = first_episode["reset_obs"]
    np.testing.assert_array_equal(obs["observation.state"], first["observation.state"])
    np.testing.assert_array_equal(env.libero_env.get_sim_state(), first_episode["sim_state"])
    for key in IMAGE_KEYS:
        np.testing.assert_array_equal(obs[key], first[key])


@pytest.mark.slow
def test_reset_applies_the_chosen_init_state_and_truncates_after_max_episode_steps():
    name = sim.suite_tasks("libero_object")[2]
    env = sim.make("libero_object", name, max_episode_steps=3, settle_steps=0)
    try:
        assert (env.task_description, env.max_episode_steps, env.settle_steps) == (name, 3, 0)
        with pytest.raises(RuntimeError, match=r"call reset\(\) before step\(\)"):
            env.step(NO_OP)
        obs, info = env.reset(options={"init_state": 7})
        # Without settle steps, the simulator holds exactly LIBERO's init state 7 (time, qpos, qvel),
        # as LIBERO itself ships it for this task.
        libero_object = libero_benchmark.get_benchmark_dict()["libero_object"]()
        init_states = libero_object.get_task_init_states(env.task_id)
        np.testing.assert_array_equal(env.libero_env.get_sim_state(), init_states[7])
        assert not np.array_equal(init_states[7], init_states[8])
        truncated = [env.step(NO_OP)[3] for _ in range(3)]
        assert truncated == [False, False, True]
        assert env.steps == 3
    finally:
        env.close()


@pytest.mark.slow
def test_skipping_the_frames_between_chunks_leaves_every_drawn_frame_the_protocols(spatial_env):
    """A policy executing 4 actions per chunk looks at one observation in 4. Rendering only
    those must give the same frames, bit for bit, as rendering every step (robosuite's camera
    timers must not shift), and the same physics."""
    env = spatial_env
    actions = [close_gripper_and_move(step) for step in range(8)]
    runs = []
    for every in (1, 4):
        env.reset(options={"init_state": INIT_STATE})
        frames = {}
        for step, action in enumerate(actions):
            env.render_images = (step + 1) % every == 0
            observation = env.step(action)[0]
            assert (IMAGE_KEYS.keys() <= observation.keys()) is env.render_images
            if env.render_images:
                frames[step] = {key: observation[key] for key in IMAGE_KEYS}
        env.render_images = True
        runs.append((frames, env.libero_env.get_sim_state().copy()))
    (every_step, state_always), (some_steps, state_skipping) = runs
    assert sorted(some_steps) == [3, 7]
    for step, frames in some_steps.items():
        for key, image in frames.items():
            np.testing.assert_array_equal(image, every_step[step][key], err_msg=f"{key} {step}")
    np.testing.assert_array_equal(state_always, state_skipping)
    agentview = next(iter(IMAGE_KEYS))
    assert not np.array_equal(every_step[3][agentview], every_step[7][agentview]), (
        "the arm moved between the compared frames"
    )


@pytest.mark.slow
def test_frames_do_not_depend_on_other_envs_built_or_closed_in_the_process(spatial_env):
    """robosuite never makes a context current again after creating it: before the fix, once
    another LIBERO env had been built and closed (an evaluation worker switching tasks), this
    env drew its frames with no context current, and they changed in scattered pixels."""

    def frames() -> list[np.ndarray]:
        spatial_env.reset(options={"init_state": INIT_STATE})
        return [spatial_env.step(close_gripper_and_move(step))[0] for step in range(3)]

    before = frames()
    other = sim.make("libero_object", 1, image_size=IMAGE_SIZE, settle_steps=0)
    other.reset(options={"init_state": 0})
    other.step(NO_OP)
    after_build = frames()
    other.close()
    after_close = frames()
    for observations in (after_build, after_close):
        for step, observation in enumerate(observations):
            for key in IMAGE_KEYS:
                np.testing.assert_array_equal(observation[key], before[step][key], err_msg=key)


@pytest.mark.slow
def test_fast_render_draws_the_same_scene_cheaper_and_leaves_the_physics_alone(spatial_env):
    """`render_quality="fast"` (for generating training data) must change only how frames are
    drawn: the same states, the same scene in the images (within a few grey levels on average:
    reflections and edge smoothing go), never the protocol's frames bit for bit."""
    fast = sim.make("libero_spatial", 0, image_size=IMAGE_SIZE, render_quality="fast")
    try:
        assert fast.libero_env.env.sim._render_context_offscreen.con.offSamples == 0
        runs = []
        for env in (spatial_env, fast):
            env.reset(options={"init_state": INIT_STATE})
            observations = [env.step(close_gripper_and_move(step))[0] for step in range(3)]
            runs.append((observations, env.libero_env.get_sim_state().copy()))
    finally:
        fast.close()
    (protocol, protocol_state), (cheap, cheap_state) = runs
    np.testing.assert_array_equal(protocol_state, cheap_state)
    for step in range(3):
        np.testing.assert_array_equal(
            protocol[step]["observation.state"], cheap[step]["observation.state"]
        )
        for key in IMAGE_KEYS:
            drawn, reference = cheap[step][key].astype(float), protocol[step][key].astype(float)
            assert drawn.shape == reference.shape
            difference = float(np.abs(drawn - reference).mean())
            assert 0.0 < difference < 12.0, (
                f"{key} step {step}: mean |fast - protocol| {difference:.2f}"
            )


def test_an_unknown_render_quality_is_refused_by_name():
    with pytest.raises(ValueError, match="render_quality must be one of .*'fast'.*got 'cheap'"):
        LiberoEnv("libero_spatial", 0, render_quality="cheap")
