"""Input and output transforms: everything robot- or dataset-specific, kept out of the network.

Observations in DESIGN.md's format (uint8 images per camera, float32[8] state, task text) become
normalized model inputs; predicted actions are un-normalized back to the robot's units. Key
mapping lets a robot's own observation keys (e.g. `observation/image`) feed the same model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from data.normalize import Normalizer
from vla.config import VLAConfig
from vla.model import ModelInputs
from vla.tokenizer import encode_text


@dataclass(frozen=True)
class ProcessorConfig:
    state_norm: str = "mean_std"
    action_norm: str = "mean_std"
    # robot key -> our key, applied before anything else (e.g. {"observation/image": "observation.images.agentview"})
    key_map: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> ProcessorConfig:
        return cls(**dict(payload))


class Processor:
    def __init__(
        self,
        config: VLAConfig,
        processor: ProcessorConfig,
        stats: Mapping[str, Mapping[str, Any]],
        tokenizer: Any,
    ) -> None:
        missing = [key for key in ("observation.state", "action") if key not in stats]
        if missing:
            raise KeyError(
                f"normalization stats lack {missing}; they come from the dataset's meta/stats.json"
            )
        self.config = config
        self.processor = processor
        self.tokenizer = tokenizer
        self.normalizer = Normalizer(
            stats, {"observation.state": processor.state_norm, "action": processor.action_norm}
        )

    def map_keys(self, observation: Mapping[str, Any]) -> dict[str, Any]:
        return {self.processor.key_map.get(key, key): value for key, value in observation.items()}

    def inputs(
        self, observations: Sequence[Mapping[str, Any]], device: torch.device | str = "cpu"
    ) -> ModelInputs:
        """A batch of observation dicts -> normalized model inputs."""
        observations = [self.map_keys(observation) for observation in observations]
        for index, observation in enumerate(observations):
            needed = [f"observation.images.{camera}" for camera in self.config.cameras] + [
                "observation.state",
                "task",
            ]
            missing = [key for key in needed if key not in observation]
            if missing:
                raise KeyError(f"observation {index} lacks {missing}; it has {sorted(observation)}")
        images = {
            camera: torch.stack(
                [self.image(o[f"observation.images.{camera}"]) for o in observations]
            ).to(device)
            for camera in self.config.cameras
        }
        states = np.stack(
            [np.asarray(o["observation.state"], dtype=np.float32).reshape(-1) for o in observations]
        )
        if states.shape[1] != self.config.state_dim:
            raise ValueError(
                f"observation.state has {states.shape[1]} values, the model takes {self.config.state_dim}"
            )
        state = (
            torch.from_numpy(self.normalizer.features["observation.state"].normalize(states))
            .float()
            .to(device)
        )
        ids, mask = encode_text(
            self.tokenizer, [str(o["task"]) for o in observations], self.config.max_text_tokens
        )
        return ModelInputs(
            images=images, text_ids=ids.to(device), text_mask=mask.to(device), state=state
        )

    def image(self, image: Any) -> torch.Tensor:
        """uint8 (H, W, 3) (or float CHW already in [0, 1]) -> (3, S, S) float in [-1, 1]."""
        tensor = torch.as_tensor(np.asarray(image))
        if tensor.ndim != 3:
            raise ValueError(f"an image must be (H, W, 3) uint8, got shape {tuple(tensor.shape)}")
        if tensor.shape[-1] == 3 and tensor.shape[0] != 3:
            tensor = tensor.permute(2, 0, 1)
        tensor = tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()
        size = self.config.image_size
        if tensor.shape[1:] != (size, size):
            tensor = F.interpolate(
                tensor[None],
                size=(size, size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )[0]
        return tensor * 2.0 - 1.0

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return self.normalizer.features["action"].normalize(actions)

    def actions(self, normalized: torch.Tensor) -> np.ndarray:
        """Model output (B, H, A) -> robot actions in dataset units, float32."""
        actions = self.normalizer.features["action"].unnormalize(normalized.float().cpu().numpy())
        return actions.astype(np.float32)
