"""The scripted LIBERO expert: it solves fixed init states of real LIBERO tasks, its goals come from
the BDDL file, physics without cameras is the physics with them, and a goal it has no primitive
for is refused by name and listed as such in the success table.

Each rollout runs without rendering (~0.02 s a step); building a LIBERO scene takes ~8 s.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.libero
pytest.importorskip("libero.libero", reason="needs the `libero` extra: pip install -e '.[libero]'")

import sim  # noqa: E402
from sim.expert import ScriptedExpert, rollout, world_of  # noqa: E402
from sim.expert_report import TaskResult, evaluate_expert, markdown_table  # noqa: E402
from sim.libero_expert import LiberoWorld, UnsupportedGoalError  # noqa: E402
from sim.tasks import PlaceStep  # noqa: E402


@pytest.mark.parametrize(
    ("suite", "task", "init_states", "goal"),
    [
        # a can into the basket; a flat box whose neighbour stands where the hand would go
        ("libero_object", 0, (0, 1), PlaceStep("alphabet_soup_1", "basket_1_contain_region", "in")),
        ("libero_object", 1, (1, 2), PlaceStep("cream_cheese_1", "basket_1_contain_region", "in")),
        # a bowl, too wide for the fingers, by its rim onto the plate
        ("libero_spatial", 0, (0, 1), PlaceStep("akita_black_bowl_1", "plate_1", "on")),
    ],
)
def test_expert_solves_fixed_init_states(suite, task, init_states, goal) -> None:
    env = sim.make(suite, task, render_images=False)
    try:
        assert tuple(world_of(env).steps) == (goal,)
        for init_state in init_states:
            assert rollout(env, expert_seed=init_state, init_state=init_state), (
                f"{suite} task {task}: the expert failed from init state {init_state}"
            )
            assert env.steps < env.max_episode_steps
    finally:
        env.close()


def test_physics_without_cameras_is_the_physics_with_them() -> None:
    """`render_images=False` (the expert table's fast path) must not change a single state."""
    states = []
    for render_images in (True, False):
        env = sim.make("libero_object", 0, render_images=render_images, image_size=64)
        try:
            observation, _ = env.reset(options={"init_state": 2})
            assert ("observation.images.agentview" in observation) is render_images
            expert = ScriptedExpert(world_of(env), seed=2)
            for _ in range(25):
                env.step(expert.act().action)
            states.append(env.libero_env.get_sim_state().copy())
        finally:
            env.close()
    np.testing.assert_array_equal(states[0], states[1])


def test_a_goal_without_a_primitive_is_refused_by_name_and_reported_as_such() -> None:
    task = "open the middle drawer of the cabinet"
    env = sim.make("libero_goal", task, render_images=False)
    try:
        env.reset(options={"init_state": 0})
        with pytest.raises(
            UnsupportedGoalError, match=r"\('open', 'wooden_cabinet_1_middle_region'\)"
        ):
            LiberoWorld(env)
    finally:
        env.close()
    # the success table lists it without counting it, so one run covers a whole suite
    result = evaluate_expert("libero_goal", task, episodes=2)
    assert (result.episodes, result.successes) == (0, 0) and "'open'" in result.unsupported
    solved = TaskResult("libero_object", "some task", "libero_object", 2, 2, 140.0, ())
    table = markdown_table([result, solved], seconds=60.0, workers=1)
    assert f"| libero_goal | {task} | libero_goal | no primitive |" in table
    assert "Overall: 2/2 (100.0%) over 1 tasks" in table


def test_joint_goals_run_in_the_order_they_can_be_done_and_are_skipped_when_they_hold() -> None:
    """The bottom-drawer task lists "close" first, but the bowl must go in while it is open; a
    stove that starts on is not turned again; a place into a drawer that starts closed needs an
    open primitive, which does not exist, and says so."""
    from sim.libero_labels import LiberoLabels
    from sim.tasks import JointStep

    cases = {
        ("libero_10", 3): (
            (
                PlaceStep("akita_black_bowl_1", "white_cabinet_1_bottom_region", "in"),
                JointStep("white_cabinet_1_bottom_region", "close"),
            ),
            "reach the bottom drawer of the white cabinet",
        ),
        ("libero_10", 8): (
            (
                PlaceStep("moka_pot_1", "flat_stove_1_cook_region", "on"),
                PlaceStep("moka_pot_2", "flat_stove_1_cook_region", "on"),
            ),
            "pick up the moka pot 2",
        ),
        ("libero_goal", 7): (
            (JointStep("flat_stove_1", "turnon"),),
            "grasp the knob of the flat stove",
        ),
    }
    for (suite, task), (steps, subtask) in cases.items():
        env = sim.make(suite, task, render_images=False)
        try:
            env.reset(options={"init_state": 0})
            assert tuple(world_of(env).steps) == steps, (suite, task)
            assert subtask in LiberoLabels(env).plan
        finally:
            env.close()
    env = sim.make(
        "libero_goal", "open the top drawer and put the bowl inside", render_images=False
    )
    try:
        env.reset(options={"init_state": 0})
        with pytest.raises(UnsupportedGoalError, match="starts closed.*no primitive to open it"):
            LiberoWorld(env)
    finally:
        env.close()


@pytest.mark.parametrize(
    ("suite", "task", "init_states"),
    [
        ("libero_goal", "turn on the stove", (0, 1)),  # grip the knob's fin and turn it
        # push the drawer shut, leaning in, after putting the bowl in it
        ("libero_10", "put the black bowl in the bottom drawer of the cabinet and close it", (0,)),
    ],
)
def test_expert_operates_fixtures(suite, task, init_states) -> None:
    env = sim.make(suite, task, render_images=False)
    try:
        for init_state in init_states:
            env.reset(options={"init_state": init_state})
            world = world_of(env)
            joint_steps = [step for step in world.steps if not isinstance(step, PlaceStep)]
            assert joint_steps and not any(world.operated(step) for step in joint_steps)
            assert rollout(env, expert_seed=init_state, init_state=init_state), (
                f"{suite} {task!r}: the expert failed from init state {init_state}"
            )
            assert all(world.operated(step) for step in joint_steps)  # read from the sim now
    finally:
        env.close()


def test_two_objects_put_on_one_region_go_side_by_side() -> None:
    """Both moka pots on the stove: let go over the region's centre, the second pot landed on
    the first (0/10); each now gets its own spot. Also the body grasp: a moka pot is too wide
    for the fingers only by its handle and spout."""
    env = sim.make("libero_10", "put both moka pots on the stove", render_images=False)
    try:
        assert rollout(env, expert_seed=0, init_state=0)
    finally:
        env.close()
