"""The observation and action spaces every environment of `sim` shares (DESIGN.md frame keys)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from data.schema import ACTION_DIM, DEFAULT_CAMERAS, STATE_DIM, STATE_KEY, TASK_KEY, image_key

# Characters an instruction may hold; gymnasium's default Text charset has no space.
TEXT_CHARSET = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:'\"!?()[]{}-_/&+"
)


def observation_space(height: int, width: int) -> gym.spaces.Dict:
    image = gym.spaces.Box(0, 255, (height, width, 3), np.uint8)
    return gym.spaces.Dict(
        {
            **{image_key(camera): image for camera in DEFAULT_CAMERAS},
            STATE_KEY: gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32),
            TASK_KEY: gym.spaces.Text(max_length=256, charset=TEXT_CHARSET),
        }
    )


def action_space() -> gym.spaces.Box:
    """Delta eef position (3), delta axis-angle (3), gripper (-1 open, +1 close); OSC_POSE, 20 Hz."""
    return gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
