"""Shared factories and fixtures: small datasets built from deterministic random frames, fake
model inputs and observations built from the config, and a tiny checkpoint served on loopback.

Test modules import the plain functions with `from conftest import ...`; no test module imports
another. Everything torch- or vla-side is imported inside the function that needs it, so data-only
tests do not pay for it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from data.features import default_features  # noqa: E402
from data.reasoning import ObjectBox, Reasoning  # noqa: E402
from data.schema import STATE_KEY, TASK_KEY, image_key  # noqa: E402
from data.writer import LeRobotDatasetWriter  # noqa: E402

if TYPE_CHECKING:
    from vla.config import VLAConfig
    from vla.model import ModelInputs
    from vla.policy import VLAPolicy
    from vla.serving.server import BackgroundServer

EpisodeColumns = dict[str, list]

# Instructions of the fake observations; a tokenizer trained on them knows every word.
TASKS = ("put the red cube on the plate", "put the blue cube in the bowl")
MAX_MESSAGE = 256 * 1024  # the message limit of the servers `running` starts
TINY_HORIZON = 8  # the action horizon of `save_tiny_checkpoint`


def make_episode(
    length: int, seed: int, image_size: tuple[int, int] = (32, 32), reasoning: bool = True
) -> EpisodeColumns:
    """One episode of random but reproducible frames with the default vla features."""
    rng = np.random.default_rng(seed)
    height, width = image_size
    columns: EpisodeColumns = {
        "observation.images.agentview": list(
            rng.integers(0, 256, (length, height, width, 3), dtype=np.uint8)
        ),
        "observation.images.wrist": list(
            rng.integers(0, 256, (length, height, width, 3), dtype=np.uint8)
        ),
        "observation.state": list(rng.normal(size=(length, 8)).astype(np.float32)),
        "action": list(rng.uniform(-1, 1, size=(length, 7)).astype(np.float32)),
    }
    if reasoning:
        frames = [
            Reasoning(
                plan=("pick up the red cube", "place it in the bowl"),
                subtask="pick up the red cube" if step < length // 2 else "place it in the bowl",
                move=["move down", "close gripper", "move up left"][step % 3],
                gripper_px=tuple((int(x), int(y)) for x, y in rng.integers(0, width, (5, 2))),
                objects=(ObjectBox("red cube", (1, 2, 5, 6)), ObjectBox("bowl", (10, 12, 20, 22))),
            ).to_frame()
            for step in range(length)
        ]
        for key in frames[0]:
            columns[key] = [frame[key] for frame in frames]
    return columns


@pytest.fixture
def write_dataset(tmp_path: Path) -> Callable[..., tuple[Path, list[EpisodeColumns]]]:
    """Write episodes of the given lengths; returns the root and the episodes as written."""

    def write(
        lengths: tuple[int, ...] = (7, 5, 9),
        name: str = "dataset",
        video: bool = False,
        image_size: tuple[int, int] = (32, 32),
        data_file_size_mb: float = 64,
    ) -> tuple[Path, list[EpisodeColumns]]:
        root = tmp_path / name
        writer = LeRobotDatasetWriter(
            root,
            features=default_features(image_size=image_size, video=video),
            fps=20,
            data_file_size_mb=data_file_size_mb,
        )
        episodes = []
        for number, length in enumerate(lengths):
            episode = make_episode(length, seed=number, image_size=image_size)
            writer.add_episode(episode, task=f"task {number % 2}")
            episodes.append(episode)
        writer.finalize()
        return root, episodes

    return write


def set_image_bytes(root: Path, key: str, row: int, encoded: bytes) -> None:
    """Replace the stored image of camera `key` at `row` of the first data file by `encoded`
    (e.g. garbage, or a PNG of another size), as a corrupted copy would hold it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    images = table[key].to_pylist()
    images[row] = {"bytes": encoded, "path": None}
    column = table.schema.get_field_index(key)
    table = table.set_column(column, key, pa.array(images, table.schema.field(column).type))
    pq.write_table(table, path)


# ================================================================================ worker processes
def child_pids(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (read from Linux's /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # the name may hold spaces
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            children.append(int(stat.parent.name))
    return children


def process_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (dead, not yet reaped) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_until_gone(pids: list[int], timeout: float = 20.0) -> list[int]:
    """Poll until every process in `pids` has ended or `timeout` passed; returns the survivors
    (a generous bound for processes that should end at once, not a timing threshold)."""
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if process_alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def kill_all(pids: list[int]) -> None:
    """Clean up after a failed orphan check: SIGKILL each given pid that still runs."""
    for pid in pids:
        if process_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def assert_children_end(children: list[int], what: str) -> None:
    """Assert that every one of `children` ends once `what` was killed (killing any survivor
    afterwards, so a failure leaves no orphans behind)."""
    survivors = wait_until_gone(children)
    kill_all(survivors)
    assert not survivors, f"processes {survivors} outlived the killed {what}"


def rewrite_safetensors(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Apply `edit` to the tensors stored in a .safetensors file, keeping its metadata (the
    callers decide what happens to the checkpoint's manifest)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata=metadata)


# ====================================================================================== policy side
def fake_inputs(
    config: VLAConfig, batch: int = 3, text_lengths: tuple[int, ...] = (10, 24, 5), seed: int = 0
) -> ModelInputs:
    """Model inputs built from the config (`ModelInputs.fake`), instructions of different lengths."""
    from vla.model import ModelInputs

    return ModelInputs.fake(config, batch=batch, text_lengths=text_lengths, seed=seed)


def dataset_stats() -> dict[str, dict[str, np.ndarray]]:
    """Every statistic of state and action (mean/std, quantiles, ...), as a dataset's stats.json
    holds them, from 1000 random frames that are neither centred nor unit scale."""
    rng = np.random.default_rng(0)
    stats = {}
    for key, dim in ((STATE_KEY, 8), ("action", 7)):
        values = rng.normal(0.5, 2.0, size=(1000, dim))
        stats[key] = {
            "mean": values.mean(0),
            "std": values.std(0),
            "min": values.min(0),
            "max": values.max(0),
            "q01": np.quantile(values, 0.01, 0),
            "q99": np.quantile(values, 0.99, 0),
            "count": np.array([1000]),
        }
    return stats


def observation(
    seed: int = 0, task: str = TASKS[0], size: int | tuple[int, int] = 96, **overrides: Any
) -> dict[str, Any]:
    """One raw observation as an env or a robot sends it: both cameras of the tiny config at
    `size` (one side of a square, or (height, width)), the state and the instruction.

    `overrides` replace or add keys, e.g. a wrong dtype for a test of the checks.
    """
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    return {
        **{
            image_key(camera): rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            for camera in ("agentview", "wrist")
        },
        STATE_KEY: rng.normal(size=8).astype(np.float32),
        TASK_KEY: task,
        **overrides,
    }


TINY_RESOLUTION = (64, 64)  # camera size recorded in tiny checkpoints (the tiny model's own)


def save_tiny_checkpoint(
    directory: Path,
    reasoning_dropout: float = 0.5,
    action_horizon: int = TINY_HORIZON,
    resolution: tuple[int, int] = TINY_RESOLUTION,
) -> Path:
    """A tiny random-weight checkpoint under `directory`, written exactly as training exports one
    (cameras recorded at `resolution`, reasoning recorded as trained).

    `reasoning_dropout=1.0` makes it an act-only checkpoint, one that must refuse to think.
    """
    import torch

    from data.schema import ObservationSpec
    from vla.checkpoint import save_checkpoint
    from vla.config import VLAConfig
    from vla.model import VLAModel
    from vla.processor import ProcessorConfig
    from vla.tokenizer import train_tokenizer

    torch.manual_seed(0)
    config = VLAConfig.named("tiny", action_horizon=action_horizon)
    tokenizer = train_tokenizer(TASKS, vocab_size=512)
    tokenizer.save_pretrained(directory / "tokenizer")
    return save_checkpoint(
        directory / "checkpoint",
        VLAModel(config).eval(),
        config,
        dataset_stats(),
        processor=ProcessorConfig(
            action_norm="quantile", reasoning_dropout=reasoning_dropout
        ).to_dict(),
        observation_spec=ObservationSpec.uniform(config.cameras, resolution, config.state_dim),
        tokenizer_dir=directory / "tokenizer",
        reasoning_trained=reasoning_dropout < 1.0,
    )


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`save_tiny_checkpoint` with its defaults, once per test module."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint"))


# The tiny checkpoints here are untrained: their chunks stray several training ranges away from
# their stats (a trained one stays near them), so servers in tests check actions against a range
# this many widths wider on each side instead of the default 1.
UNTRAINED_ACTION_MARGIN = 8.0


@contextlib.contextmanager
def running(policy: VLAPolicy, **config: Any) -> Iterator[BackgroundServer]:
    """A policy server on a free loopback port (seed 0, MAX_MESSAGE) for the `with` block;
    `config` overrides any ServerConfig field."""
    from vla.serving.server import BackgroundServer, PolicyServer, ServerConfig

    config = {
        "port": 0,
        "max_message_bytes": MAX_MESSAGE,
        "seed": 0,
        "action_range_margin": UNTRAINED_ACTION_MARGIN,
        **config,
    }
    with BackgroundServer(PolicyServer(policy, ServerConfig(**config))) as server:
        yield server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests are skipped, with the reason printed in the summary, where CUDA is absent."""
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(
        reason="needs a CUDA device; none is visible (torch.cuda.is_available() is False)"
    )
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
