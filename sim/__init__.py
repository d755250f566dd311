"""MuJoCo/robosuite environments: task suites, scripted experts and reasoning labels.

May import `data` (to write episodes), never `vla`. Every environment follows the gymnasium API
with the observation dict of DESIGN.md:

    env = sim.make("quickstart", "put the red cube on the plate")
    obs, info = env.reset(seed=0)                  # or options={"init_state": i}, i in 0..49
    obs, reward, terminated, truncated, info = env.step(action)   # info["success"]
"""

from sim.registry import available_suites, get_suite, make, suite_tasks

__all__ = ["available_suites", "get_suite", "make", "suite_tasks"]
