"""Our table-top suites: the gym API, reproducible scenes, experts that solve every family,
labels that agree with rendered pixels, and dataset generation that is ordered and resumable."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import mujoco
import numpy as np
import pytest

import sim
from data.reasoning import Reasoning
from sim.base_env import SimEnv
from sim.camera import project
from sim.env import CAMERAS, TabletopEnv
from sim.expert import ExpertStep, rollout
from sim.labels import (
    EpisodeLabeler,
    gripper_pixel,
    label_source_of,
    motion_primitive,
    visible_objects,
)
from sim.registry import TaskIndexError, UnknownNameError
from sim.suites import SUITE_TASKS

BAD_ACTIONS = {
    "six numbers": np.zeros(6),
    "two actions": np.zeros((2, 7)),
    "NaN": np.full(7, np.nan),
    "infinity": np.array([0, 0, 0, 0, 0, 0, np.inf]),
}


@pytest.fixture(scope="module")
def quickstart_env():
    env = sim.make("quickstart", 0, image_size=(96, 128))
    yield env
    env.close()


def run_expert(
    env: TabletopEnv,
    *,
    init_state: int | None = None,
    seed: int = 0,
    labeler: EpisodeLabeler | None = None,
) -> bool:
    def label(observation: dict, step: ExpertStep) -> None:
        labeler.record(step.action, step.subtask_index)

    return rollout(
        env, seed, scene_seed=seed, init_state=init_state, before_step=label if labeler else None
    )


# ---------------------------------------------------------------------- registry and API
def test_registry_lists_suites_and_families() -> None:
    assert {"quickstart", "tabletop", "libero_spatial", "libero_10"} <= set(sim.available_suites())
    assert 2 <= len(sim.suite_tasks("quickstart")) <= 4
    tabletop = SUITE_TASKS["tabletop"]
    assert len(tabletop) >= 12
    assert {task.family for task in tabletop} == {"pick_place", "stack", "spatial", "multi_step"}
    targets = {step.target for task in tabletop for step in task.steps}
    assert {"bowl", "plate", "basket"} <= targets
    with pytest.raises(KeyError, match="did you mean 'put the red cube on the plate'"):
        sim.make("quickstart", "put the red cube on the plat")
    with pytest.raises(KeyError, match="did you mean 'tabletop'"):
        sim.make("tabletp", 0)


def test_the_registry_imports_no_suite_module() -> None:
    """The registry stands alone (no import cycle); the catalog registers every suite, and
    `import sim` loads neither until a lookup needs it. Registering the LIBERO suites does not
    import the optional `libero` package."""
    code = (
        "import sys, sim, sim.registry as registry\n"
        "loaded = sorted(name for name in sys.modules if name.startswith('sim.'))\n"
        "assert loaded == ['sim.registry'], loaded\n"
        "assert registry.registered_names() == [], registry.registered_names()\n"
        "assert {'quickstart', 'tabletop', 'libero_spatial', 'libero_90'} <= set(sim.available_suites())\n"
        "assert 'sim.catalog' in sys.modules\n"
        "assert {'sim.suites', 'sim.libero_env'} <= set(sys.modules)\n"
        "assert 'libero' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("suite", sim.available_suites())
def test_every_task_resolves_by_name_and_index(suite: str) -> None:
    spec = sim.get_suite(suite)
    if "libero" in spec.requires:
        pytest.importorskip("libero.libero", reason="LIBERO task names need the `libero` extra")
    names = sim.suite_tasks(suite)
    assert len(names) == len(set(names)) == len(spec.tasks) > 0
    for index, name in enumerate(names):
        assert spec.resolve(name) == spec.resolve(index) == spec.resolve(str(index)) == name
        assert spec.index(name) == spec.index(np.int64(index)) == index
    last = len(names) - 1
    for index in (len(names), -1):
        with pytest.raises(
            TaskIndexError, match=rf"suite {suite!r} has {len(names)} tasks \(0\.\.{last}\)"
        ):
            spec.resolve(index)
    typo = names[0][:-1]
    with pytest.raises(UnknownNameError) as error:
        spec.resolve(typo)
    assert str(error.value) == (
        f"suite {suite!r} has no task {typo!r} (did you mean {names[0]!r}?); "
        f"run `eval.py --suite {suite} --list-tasks` to see them"
    )
    # Callers written for a KeyError (a lookup) or a ValueError (an argument) both catch it.
    assert isinstance(error.value, KeyError) and isinstance(error.value, ValueError)
    with pytest.raises(TypeError, match="a name or an index"):
        spec.resolve(True)  # type: ignore[arg-type]


def test_make_takes_a_task_name_or_index_and_says_how_to_list_tasks() -> None:
    env = sim.make("quickstart", "2", render_images=False)  # an index as a command line passes it
    assert env.task_description == sim.suite_tasks("quickstart")[2]
    env.close()
    with pytest.raises(IndexError, match=r"task index 3 is out of range.*0\.\.2.*--list-tasks"):
        sim.make("quickstart", 3)


def test_observations_follow_the_contract(quickstart_env: TabletopEnv) -> None:
    obs, info = quickstart_env.reset(seed=0)
    assert obs["observation.images.agentview"].shape == (96, 128, 3)
    assert obs["observation.images.wrist"].dtype == np.uint8
    assert obs["observation.state"].shape == (8,) and obs["observation.state"].dtype == np.float32
    assert obs["task"] == "put the red cube on the plate" == quickstart_env.task_description
    assert quickstart_env.observation_space.contains(obs)
    assert set(obs) == set(quickstart_env.observation_space.spaces), (
        "no privileged state in observations"
    )
    assert info["success"] is False
    np.testing.assert_allclose(
        obs["observation.state"][:3], quickstart_env.eef_position(), atol=1e-6
    )
    with pytest.raises(ValueError, match="7 finite numbers"):
        quickstart_env.step(np.full(7, np.nan))


def test_init_states_are_fixed_and_disjoint_from_training_seeds(
    quickstart_env: TabletopEnv,
) -> None:
    first, _ = quickstart_env.reset(options={"init_state": 7})
    cube_first = quickstart_env.object_position("red cube")
    quickstart_env.step(np.array([1, 0, 0, 0, 0, 0, 1.0]))
    again, _ = quickstart_env.reset(options={"init_state": 7})
    np.testing.assert_array_equal(quickstart_env.object_position("red cube"), cube_first)
    np.testing.assert_array_equal(again["observation.state"], first["observation.state"])
    np.testing.assert_array_equal(
        again["observation.images.agentview"], first["observation.images.agentview"]
    )
    quickstart_env.reset(options={"init_state": 8})
    assert not np.allclose(quickstart_env.object_position("red cube"), cube_first)
    quickstart_env.reset(seed=7)
    assert not np.allclose(quickstart_env.object_position("red cube"), cube_first), (
        "train seed 7 != init state 7"
    )
    with pytest.raises(ValueError, match="init_state must be in 0..49"):
        quickstart_env.reset(options={"init_state": 50})


def test_quickstart_objects_stay_in_their_regions(quickstart_env: TabletopEnv) -> None:
    """LIBERO-style layout: every object within its region's square, turned by <= max_yaw."""
    task = quickstart_env.task
    assert set(task.regions) == {spec.name for spec in task.objects}
    offsets = []
    for init_state in range(0, 50, 5):
        quickstart_env.reset(options={"init_state": init_state})
        for name, centre in task.regions.items():
            offset = quickstart_env.object_position(name)[:2] - np.asarray(centre)
            assert np.all(np.abs(offset) <= task.region_half_size + 1e-6), (name, offset)
            offsets.append(offset)
            if name != "bowl":
                assert abs(quickstart_env.object_yaw(name)) <= task.max_yaw + 1e-6
    assert np.ptp(np.array(offsets), axis=0).min() > task.region_half_size, "positions vary"
    with pytest.raises(ValueError, match="regions name unknown object 'green cube'"):
        replace(task, regions={"green cube": (0.0, 0.0)})


def test_truncates_after_max_episode_steps() -> None:
    env = sim.make("quickstart", 1, max_episode_steps=3, render_images=False)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(7))
    env.reset(seed=0)
    flags = [env.step(np.zeros(7))[3] for _ in range(3)]
    assert flags == [False, False, True] and env.steps == 3
    env.reset(seed=0)
    assert env.steps == 0, "a reset starts counting again"
    env.close()


@pytest.mark.parametrize("bad", BAD_ACTIONS.values(), ids=BAD_ACTIONS.keys())
def test_tabletop_env_refuses_malformed_actions(bad: np.ndarray) -> None:
    env = sim.make("quickstart", 1, render_images=False)
    env.reset(options={"init_state": 0})
    before = env.proprio_state()
    with pytest.raises(ValueError, match=r"action must be 7 finite numbers in \[-1, 1\], got"):
        env.step(bad)
    assert env.steps == 0
    np.testing.assert_array_equal(env.proprio_state(), before)  # nothing moved
    env.close()


def test_tabletop_env_clips_actions_to_the_unit_box() -> None:
    env = sim.make("quickstart", 1, render_images=False)
    states = []
    for action in ([3.0, -2.0, 1.5, 0, 0, 0, -9.0], [1.0, -1.0, 1.0, 0, 0, 0, -1.0]):
        env.reset(options={"init_state": 4})
        for _ in range(3):
            observation = env.step(np.array(action))[0]
        states.append(observation["observation.state"])
    np.testing.assert_array_equal(states[0], states[1])
    env.close()


class _ScriptedPhysics(SimEnv):
    """A SimEnv whose physics only records actions and "solves" the task at step `solve_at`."""

    def __init__(self, max_episode_steps: int, solve_at: int | None = None) -> None:
        self.max_episode_steps = max_episode_steps
        self.solve_at = solve_at
        self.applied: list[np.ndarray] = []

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self.applied = []
        return {"t": 0}, {}

    def _apply_action(self, action: np.ndarray) -> tuple[dict, bool]:
        self.applied.append(action)
        return {"t": len(self.applied)}, len(self.applied) == self.solve_at


def test_env_base_checks_actions_counts_steps_and_ends_episodes() -> None:
    env = _ScriptedPhysics(max_episode_steps=3)
    with pytest.raises(RuntimeError, match=r"call reset\(\) before step\(\)"):
        env.step(np.zeros(7))
    env.reset()
    for bad in BAD_ACTIONS.values():
        with pytest.raises(ValueError, match="7 finite numbers"):
            env.step(bad)
    assert env.applied == [] and env.steps == 0
    results = [env.step(np.array([[2.0, -2.0, 0.5, 0, 0, 0, 1.0]])) for _ in range(3)]
    np.testing.assert_array_equal(env.applied[0], [1.0, -1.0, 0.5, 0, 0, 0, 1.0])
    assert env.applied[0].dtype == np.float64 and env.applied[0].shape == (7,)
    assert [(r[1], r[2], r[3], r[4]) for r in results] == [
        (0.0, False, False, {"success": False}),
        (0.0, False, False, {"success": False}),
        (0.0, False, True, {"success": False}),
    ]
    assert results[-1][0] == {"t": 3} and env.steps == 3
    # Success on the last allowed step ends the episode as a success, not a truncation.
    solved = _ScriptedPhysics(max_episode_steps=2, solve_at=2)
    solved.reset()
    assert [solved.step(np.zeros(7))[1:4] for _ in range(2)] == [
        (0.0, False, False),
        (1.0, True, False),
    ]


# ---------------------------------------------------------------------- experts
@pytest.mark.slow
@pytest.mark.parametrize(
    "suite,index",
    [("quickstart", 0), ("quickstart", 1), ("quickstart", 2)]
    + [("tabletop", i) for i in (2, 3, 6, 10, 12)],  # basket, cylinder, stack, spatial, two-step
)
def test_expert_solves_the_task(suite: str, index: int) -> None:
    env = sim.make(suite, index, render_images=False)
    assert run_expert(env, init_state=0), (
        f"expert failed {env.task_description!r} from init state 0"
    )
    env.close()


def test_nothing_succeeds_without_acting() -> None:
    env = sim.make(
        "tabletop", 12, render_images=False
    )  # two-step: the first placement alone is not success
    env.reset(options={"init_state": 0})
    for _ in range(20):
        _, _, terminated, _, info = env.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))
    assert not terminated and not info["success"]
    env.close()


# ---------------------------------------------------------------------- labels
def test_motion_primitives() -> None:
    assert motion_primitive(np.array([0.5, 0, -0.4, 0, 0, 0, -1]), None) == "move forward down"
    assert (
        motion_primitive(np.array([-0.5, 0.3, 0.2, 0, 0, 0, -1]), None) == "move backward right up"
    )
    assert motion_primitive(np.array([0, -0.3, 0, 0, 0, 0, -1]), None) == "move left"
    assert motion_primitive(np.array([0.05, 0, 0, 0, 0, 0, 1]), 2) == "close gripper"
    assert motion_primitive(np.array([0.05, 0, 0, 0, 0, 0, -1]), 0) == "open gripper"
    assert motion_primitive(np.array([0.05, 0, 0, 0, 0, 0, 1]), 30) == "stop"


def test_projections_agree_with_rendered_pixels(quickstart_env: TabletopEnv) -> None:
    """The gripper's projected pixel lies on gripper pixels, and object boxes match the pixels
    each object covers in a segmentation render of the same camera."""
    env = quickstart_env
    env.reset(options={"init_state": 3})
    for _ in range(8):  # lower the open gripper a little so its fingers frame the grip site
        env.step(np.array([0, 0, -0.6, 0, 0, 0, -1.0]))
    segmentation = env.cameras.segment(env.data, CAMERAS["agentview"])
    # robosuite draws the grip site as a small sphere: the projected grip site must land on it
    sites = env.cameras.segment(env.data, CAMERAS["agentview"], mujoco.mjtObj.mjOBJ_SITE)
    x, y = gripper_pixel(env)
    assert env.robot.eef_site_id in sites[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2], (x, y)
    # and the projected centre of the gripper's hand lands on the hand
    height, width = env.image_size
    for body in ("gripper0_right_gripper", "gripper0_leftfinger", "gripper0_rightfinger"):
        body_id = env.model.body(body).id
        geoms = [
            g
            for g in range(env.model.ngeom)
            if env.model.geom_bodyid[g] == body_id and env.model.geom_group[g] == 1
        ]
        pixels, in_front = project(
            env.model, env.data, CAMERAS["agentview"], env.data.geom_xpos[geoms[:1]], height, width
        )
        ((column, row),) = pixels
        assert in_front[0]
        window = segmentation[int(row) - 1 : int(row) + 2, int(column) - 1 : int(column) + 2]
        assert geoms[0] in window, (
            f"{body}: projected at ({column:.1f}, {row:.1f}), pixels show {set(window.ravel())}"
        )

    boxes = {box.name: box.box for box in visible_objects(env)}
    for spec in env.task.objects:
        mask = np.isin(segmentation, env.object_geom_ids(spec.name))
        assert mask.any(), f"{spec.name} is not visible at this init state"
        rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        seen = np.array([columns[0], rows[0], columns[-1], rows[-1]])
        projected = np.array(boxes[spec.name])
        # the projected box contains what is seen (it may be larger where the arm hides a part)
        assert (projected[:2] <= seen[:2] + 1).all() and (projected[2:] >= seen[2:] - 1).all(), (
            spec.name,
            projected,
            seen,
        )
        if spec.kind == "cube":
            assert np.abs(projected - seen).max() <= 3, (spec.name, projected, seen)


def test_episode_labels_follow_the_expert() -> None:
    env = sim.make("quickstart", 2, render_images=False)
    labeler = EpisodeLabeler(label_source_of(env))
    assert run_expert(env, seed=5, labeler=labeler)
    columns = labeler.columns()
    frames = [
        Reasoning.from_frame({key: values[t] for key, values in columns.items()})
        for t in range(len(columns["reasoning.move"]))
    ]
    assert frames[0].plan == ("pick up the red cube", "place it in the bowl")
    subtasks = [frame.subtask for frame in frames]
    switch = subtasks.index("place it in the bowl")
    assert set(subtasks[:switch]) == {"pick up the red cube"} and set(subtasks[switch:]) == {
        "place it in the bowl"
    }
    moves = [frame.move for frame in frames]
    assert "close gripper" in moves[:switch] and "open gripper" in moves[switch:]
    assert moves.index("close gripper") < moves.index("open gripper")
    assert all(len(frame.gripper_px) == 5 for frame in frames)
    # the trace of frame t starts where the trace of frame t+1 starts one step earlier
    assert all(
        frames[t].gripper_px[1] == frames[t + 1].gripper_px[0] for t in range(len(frames) - 1)
    )
    assert {box.name for box in frames[0].objects} == {"red cube", "blue cube", "bowl"}
    env.close()


@pytest.mark.slow
def test_vector_env_runs_real_simulations_like_in_process_envs() -> None:
    """Two quickstart tasks in worker processes give the same observations as in this process."""
    from functools import partial

    from sim.vector import SubprocVectorEnv

    factories = [partial(sim.make, "quickstart", index, image_size=(48, 48)) for index in (0, 2)]
    actions = np.random.default_rng(0).uniform(-0.5, 0.5, (4, 7)).astype(np.float32)
    with SubprocVectorEnv(factories) as vector_env:
        results = vector_env.reset([0, 1], options=[{"init_state": 3}, {"init_state": 4}])
        assert not any(result.crashed for result in results)
        for action in actions:
            stepped = vector_env.step({0: action, 1: action})
        assert vector_env.call(1, "task_description") == "put the red cube in the bowl"
    for index, (factory, init_state) in enumerate(zip(factories, (3, 4), strict=True)):
        env = factory()
        env.reset(options={"init_state": init_state})
        for action in actions:
            observation = env.step(action)[0]
        np.testing.assert_array_equal(
            stepped[index].obs["observation.state"], observation["observation.state"]
        )
        np.testing.assert_array_equal(
            stepped[index].obs["observation.images.agentview"],
            observation["observation.images.agentview"],
        )
        env.close()
