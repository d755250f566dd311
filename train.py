"""Train a VLA policy (Lightning).

    python train.py                                   # configs/quickstart.yaml (CPU quickstart)
    python train.py --config configs/quickstart.yaml optim.lr=1e-4 trainer.max_steps=500
    python train.py ... --resume                      # continue from <run>/checkpoints/last.ckpt

Overrides are `section.key=value` (values are YAML). The deployable checkpoint is exported to
`<output_dir>/<name>/export/` at the end; docs/training.md has the details.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "quickstart.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument(
        "--resume", action="store_true", help="continue from the run's last checkpoint"
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args(argv)
    from data.stats import StatsError
    from vla.training.checkpoint_io import ResumeError
    from vla.training.config import ConfigError, load_config
    from vla.training.module import NonFiniteTrainingError
    from vla.training.run import train

    try:
        config = load_config(args.config, args.overrides)
        with periodic_evaluation(config) as callbacks:
            export = train(config, resume=args.resume, callbacks=callbacks)
    except (ConfigError, ResumeError, StatsError) as error:  # what the user must fix first
        print(f"error: {error}", file=sys.stderr)
        return 2
    except NonFiniteTrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"exported checkpoint: {export}")
    return 0


@contextlib.contextmanager
def periodic_evaluation(config: Any) -> Iterator[list]:
    """`eval.every_n_steps > 0`: a callback that rolls the policy out in simulation every N
    steps and logs success and a video; the env workers live as long as training."""
    section = config.eval
    if section.every_n_steps <= 0:
        yield []
        return
    from sim.runner import EnvRunner
    from vla.training.evaluation import PeriodicEvaluation

    video_root = config.run_dir / "eval_videos"
    runner = EnvRunner(
        section.suite,
        episodes_per_task=section.episodes_per_task,
        num_envs=section.num_envs,
        image_size=(
            (section.image_size, section.image_size)
            if section.image_size
            else dataset_camera_resolution(config)
        ),
        video_episodes_per_task=section.videos_per_task,
        progress=False,
    )

    runs = itertools.count()

    def evaluate(policy: Any) -> dict:
        video_dir = video_root / f"eval{next(runs):03d}"
        return runner.run(policy, policy.new_chunker, video_dir=video_dir).to_dict()

    with runner:
        yield [PeriodicEvaluation(evaluate, section.every_n_steps)]


def dataset_camera_resolution(config: Any) -> tuple[int, int]:
    """(height, width) the model's cameras have in the training dataset: what the sim renders
    for periodic evaluation, and what the export's observation spec records."""
    from data.reader import LeRobotDatasetReader
    from vla.training.run import model_config_for, training_observation_spec

    reader = LeRobotDatasetReader(config.data.path)
    return training_observation_spec(model_config_for(config), reader).resolution


if __name__ == "__main__":
    sys.exit(main())
