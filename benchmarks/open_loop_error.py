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

from data.schema import ACTION_KEY, DEFAULT_CAMERAS, STATE_KEY, TASK_KEY, image_key
from data.torch_dataset import ActionChunkDataset
from vla.policy import VLAPolicy

OBSERVATION_KEYS = (*map(image_key, DEFAULT_CAMERAS), STATE_KEY, TASK_KEY)


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
        # Images come H x W x 3, the layout of an observation (data/torch_dataset.py).
        observation = {
            key: sample[key].numpy() if torch.is_tensor(sample[key]) else sample[key]
            for key in OBSERVATION_KEYS
        }
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
