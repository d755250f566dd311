"""Open-loop fit of a checkpoint on its training data: predicted vs demonstrated actions.

For random training frames, the first `--steps` actions of the predicted chunk are compared with
the demonstration's next actions (position and rotation dimensions; the gripper is left out
because it is binary). Low error with low closed-loop success means the policy fits but does not
generalize; docs/results.md uses it that way.

    .venv/bin/python benchmarks/open_loop_error.py --checkpoint DIR --dataset outputs/quickstart/dataset
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from common import observation_from_sample

from data.schema import ACTION_KEY, DEFAULT_CAMERAS
from data.torch_dataset import ActionChunkDataset
from vla.policy import VLAPolicy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    policy = VLAPolicy.from_pretrained(args.checkpoint)
    samples = ActionChunkDataset(args.dataset, action_horizon=policy.config.action_horizon)
    errors, magnitudes = [], []
    for index in np.random.default_rng(0).choice(len(samples), args.frames, replace=False):
        sample = samples[int(index)]
        observation = observation_from_sample(sample, DEFAULT_CAMERAS)
        torch.manual_seed(0)
        predicted = policy.infer(observation)["actions"][0][: args.steps, :6]  # (steps, 6)
        demonstrated = sample[ACTION_KEY].numpy()[: args.steps, :6]
        errors.append(np.abs(predicted - demonstrated).mean())
        magnitudes.append(np.abs(demonstrated).mean())
    print(
        f"open-loop mean abs error (position, rotation) over {args.frames} frames: "
        f"{np.mean(errors):.3f}; mean abs demonstrated action: {np.mean(magnitudes):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
