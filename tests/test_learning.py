"""End to end on a CPU: expert demonstrations in MuJoCo -> training -> closed-loop success.

The easy task is reproducing demonstrations: the tiny model trains on 3 expert episodes of one
quickstart task and is rolled out from those same 3 training scenes. A random policy never
solves them; a policy whose training, export, loading, normalization or chunk execution were
broken would not either.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.baselines import RandomPolicy
from sim.catalog import suite_tasks
from sim.generate import GenerationConfig, generate_dataset
from sim.runner import EnvRunner
from vla.policy import VLAPolicy
from vla.robot.chunker import ActionChunker, ChunkerConfig
from vla.training.config import load_config
from vla.training.run import train

pytestmark = pytest.mark.slow
SCENES = 3


def test_trained_tiny_policy_beats_random_on_its_training_scenes(tmp_path: Path) -> None:
    task = suite_tasks("quickstart")[0]
    dataset = tmp_path / "dataset"
    generate_dataset(
        GenerationConfig(suite="quickstart", episodes_per_task=SCENES, tasks=(task,)),
        dataset,
        workers=1,
        progress=False,
    )
    seeds = [
        e["seed"] for e in json.loads((dataset / "meta/generation.json").read_text())["episodes"]
    ]
    assert seeds == list(range(SCENES)), "the expert solved every scene it was given"
    config = load_config(
        None,
        [
            f"data.path={dataset}",
            f"output_dir={tmp_path / 'runs'}",
            "model.name=tiny-fast",
            "processor.reasoning_dropout=1.0",  # act-only: the cheapest model that can succeed
            "data.batch_size=16",
            "data.num_workers=0",
            "optim.lr=1e-3",
            "optim.warmup_steps=50",
            "trainer.max_steps=800",
            "trainer.checkpoint_every=1000",
            "trainer.ema_decay=0.99",
            "logging.wandb=disabled",
        ],
    )
    export = train(config)
    successes = {}
    with EnvRunner(
        "quickstart",
        tasks=[task],
        episodes_per_task=SCENES,
        num_envs=2,
        scenes="train",
        progress=False,
    ) as runner:
        for name, policy in (
            # Deterministic sampling: the outcome does not hinge on the draw of the noise.
            ("trained", VLAPolicy.from_pretrained(export, noise_scale=0.0)),
            ("random", RandomPolicy(horizon=10, seed=0)),
        ):
            metrics = runner.run(policy, lambda: ActionChunker(ChunkerConfig(n_action_steps=5)))
            successes[name] = sum(e.success for e in metrics.episodes)
    print(f"successes on {SCENES} training scenes: {successes}")
    assert successes["trained"] >= 2 and successes["trained"] > successes["random"], successes
