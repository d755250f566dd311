"""Train a VLA policy (Lightning).

    python train.py                                   # configs/quickstart.yaml (CPU quickstart)
    python train.py --config configs/quickstart.yaml optim.lr=1e-4 trainer.max_steps=500
    python train.py ... --resume                      # continue from <run>/checkpoints/last.ckpt

Overrides are `section.key=value` (values are YAML). The deployable checkpoint is exported to
`<output_dir>/<name>/export/` at the end; docs/training.md has the details.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
    from vla.training.config import ConfigError, load_config
    from vla.training.run import train

    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    export = train(config, resume=args.resume)
    print(f"exported checkpoint: {export}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
