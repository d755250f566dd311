"""The `libero` extra installs the real LIBERO suites offline: assets, BDDL files and init states."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.libero

# Standard suites, their task counts and the number of fixed evaluation init states per task.
SUITES = {
    "libero_spatial": 10,
    "libero_object": 10,
    "libero_goal": 10,
    "libero_10": 10,
    "libero_90": 90,
}


@pytest.fixture(scope="module")
def libero_benchmark():
    benchmark = pytest.importorskip(
        "libero.libero.benchmark",
        reason="the `libero` extra is not installed (pip install -e '.[libero]')",
    )
    return benchmark


@pytest.mark.parametrize("suite_name", list(SUITES))
def test_suite_ships_tasks_bddl_and_init_states(libero_benchmark, suite_name: str) -> None:
    from libero.libero import get_libero_path

    suite = libero_benchmark.get_benchmark_dict()[suite_name]()
    assert suite.n_tasks == SUITES[suite_name]
    bddl_root = get_libero_path("bddl_files")
    for task_id in (0, suite.n_tasks - 1):
        task = suite.get_task(task_id)
        assert task.language and task.language == task.language.lower()
        assert os.path.isfile(os.path.join(bddl_root, task.problem_folder, task.bddl_file))
        init_states = suite.get_task_init_states(task_id)
        assert init_states.shape[0] == 50 and init_states.ndim == 2
