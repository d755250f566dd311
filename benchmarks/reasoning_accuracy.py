"""What a thinking checkpoint's chain gets right on scenes it never saw, and what a wrong chain
costs the actions: the open-loop diagnosis of think mode.

For random frames of a dataset (make a held-out one with another seed: `vla-data generate
--suite quickstart --episodes-per-task 3 --seed 1 --out outputs/quickstart/heldout`), it
compares:
- the generated chain with the frame's labels, field by field: SUBTASK and MOVE exact, GRIPPER
  trace (mean pixel distance over the 5 points), OBJECTS (mean box-centre distance, matched by
  name);
- the open-loop action error (first `--steps` actions, position and rotation dims, vs the
  demonstration) of acting without thinking, acting on the generated chain, and acting on the
  frame's own labels fed in as the chain (teacher forcing: what training shows the expert).
A large gap between the last two is exposure bias: the expert relies on chain fields that the
VLM does not generate well on new scenes.

    .venv/bin/python benchmarks/reasoning_accuracy.py --checkpoint DIR --dataset DIR [--frames 60]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from common import observation_from_sample

from data.reasoning import (
    REASONING_TAGS,
    Reasoning,
    format_reasoning,
    parse_reasoning,
    snap_pixels,
)
from data.schema import ACTION_KEY
from data.torch_dataset import ActionChunkDataset
from vla.policy import VLAPolicy

# Tag dropout in training shows the expert chains without single fields: which ones, left out of
# a generated chain, make its actions better?
DROPPED_FIELDS = (("move",), ("gripper",), ("move", "gripper"), ("objects",))


def field_errors(generated: Reasoning, label: Reasoning) -> dict[str, float]:
    errors = {
        "subtask exact": float(generated.subtask == label.subtask),
        "move exact": float(generated.move == label.move),
    }
    if generated.gripper_px and label.gripper_px:
        count = min(len(generated.gripper_px), len(label.gripper_px))
        distances = np.linalg.norm(
            np.subtract(generated.gripper_px[:count], label.gripper_px[:count]), axis=1
        )
        errors["gripper px"] = float(distances.mean())
    truth = {box.name: box.box for box in label.objects}
    centres = [
        np.linalg.norm(np.subtract(box.box, truth[box.name]).reshape(2, 2).mean(axis=0))
        for box in generated.objects
        if box.name in truth
    ]
    if centres:
        errors["objects px"] = float(np.mean(centres))
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    policy = VLAPolicy.from_pretrained(args.checkpoint, noise_scale=0.0)
    cameras = policy.config.cameras
    samples = ActionChunkDataset(
        args.dataset, action_horizon=policy.config.action_horizon, cameras=list(cameras)
    )
    fields: dict[str, list[float]] = {}
    action_errors: dict[str, list[float]] = {}
    pixel_step = policy.processor.settings.reasoning_pixel_step
    rng = np.random.default_rng(0)
    for index in rng.choice(len(samples), min(args.frames, len(samples)), replace=False):
        sample = samples[int(index)]
        observation = observation_from_sample(sample, cameras)
        label = Reasoning.from_frame(sample)
        demonstrated = sample[ACTION_KEY].numpy()[: args.steps, :6]
        thought = policy.infer(observation, think=True)
        for name, value in field_errors(
            parse_reasoning(thought["reasoning"][0], strict=False), label
        ).items():
            fields.setdefault(name, []).append(value)
        generated = parse_reasoning(thought["reasoning"][0], strict=False)
        outputs = {
            "act": policy.infer(observation),
            "think": thought,
            # as training showed it: pixels snapped to the checkpoint's reasoning_pixel_step
            "teacher-forced": policy.infer(
                observation, reasoning=[format_reasoning(snap_pixels(label, pixel_step))]
            ),
        }
        for dropped in DROPPED_FIELDS:  # the generated chain fed back without some fields
            kept = [tag for tag in REASONING_TAGS if tag not in dropped]
            text = format_reasoning(generated, include=kept)
            outputs[f"think, without {'+'.join(dropped)}"] = policy.infer(
                observation, reasoning=[text]
            )
        for name, out in outputs.items():
            predicted = out["actions"][0][: args.steps, :6]
            action_errors.setdefault(name, []).append(
                float(np.abs(predicted - demonstrated).mean())
            )
    print(f"{args.frames} frames of {args.dataset}, checkpoint {args.checkpoint}")
    print("| chain field | generated vs label |")
    print("| --- | ---: |")
    for name, values in fields.items():
        unit = "" if "exact" in name else " px"
        shown = f"{100 * np.mean(values):.0f}%" if "exact" in name else f"{np.mean(values):.1f}"
        print(f"| {name.replace(' exact', '').replace(' px', '')} | {shown}{unit} |")
    print("| actions from | open-loop abs error (pos, rot) |")
    print("| --- | ---: |")
    for name, values in action_errors.items():
        print(f"| {name} | {np.mean(values):.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
