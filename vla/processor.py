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
from data.reasoning import REASONING_TAGS, Reasoning, format_reasoning
from vla.config import VLAConfig
from vla.model import ModelInputs
from vla.tokenizer import encode_text


@dataclass(frozen=True)
class ProcessorConfig:
    state_norm: str = "mean_std"
    action_norm: str = "mean_std"
    # Reasoning dropout (training): the whole chain is dropped with `reasoning_dropout` (the
    # sample then teaches acting without thinking); otherwise each tag with `tag_dropout`.
    reasoning_dropout: float = 0.5
    tag_dropout: float = 0.1
    # Random-shift augmentation (training): each image is padded by this many pixels (edge
    # replicated, at the model's resolution) and cropped back at a random offset, so the policy
    # cannot key on exact pixel positions of a few dozen demonstrations (DrQ / Diffusion Policy).
    image_shift: int = 0
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

    def training_inputs(
        self, batch: Mapping[str, Any], rng: np.random.Generator
    ) -> tuple[ModelInputs, torch.Tensor, torch.Tensor]:
        """A collated `ActionChunkDataset` batch -> (model inputs with reasoning targets after
        dropout, normalized actions (B, H, A), action_is_pad (B, H)), on the batch's device."""
        device = batch["observation.state"].device
        images = {}
        for camera in self.config.cameras:
            key = f"observation.images.{camera}"
            if key not in batch:
                raise KeyError(
                    f"the batch has no {key!r}; the model's cameras are {list(self.config.cameras)}"
                )
            images[camera] = self.random_shift(self.images(batch[key]), rng)
        state = self.normalizer.features["observation.state"].normalize(
            batch["observation.state"].float()
        )
        ids, mask = encode_text(self.tokenizer, list(batch["task"]), self.config.max_text_tokens)
        inputs = ModelInputs(
            images=images, text_ids=ids.to(device), text_mask=mask.to(device), state=state
        )
        if "reasoning.subtask" in batch:
            texts = [self.reasoning_text(frame, rng) for frame in _reasoning_frames(batch)]
            reasoning_ids, reasoning_mask = self.encode_reasoning(texts, device)
            inputs = ModelInputs(
                **{
                    **inputs.__dict__,
                    "reasoning_ids": reasoning_ids,
                    "reasoning_mask": reasoning_mask,
                }
            )
        actions = self.normalize_actions(batch["action"].float())
        return inputs, actions, batch["action_is_pad"].bool()

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, h, w) -> (B, 3, S, S) float in [-1, 1] (resized when h, w differ from S)."""
        pixels = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        size = self.config.image_size
        if pixels.shape[-2:] != (size, size):
            pixels = F.interpolate(
                pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return pixels * 2.0 - 1.0

    def random_shift(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """(B, 3, S, S) -> the same shape, each image shifted by up to `image_shift` pixels."""
        shift = self.processor.image_shift
        if shift <= 0:
            return images
        size = images.shape[-1]
        padded = F.pad(images, (shift, shift, shift, shift), mode="replicate")
        offsets = rng.integers(0, 2 * shift + 1, size=(images.shape[0], 2))
        return torch.stack(
            [
                padded[index, :, top : top + size, left : left + size]
                for index, (top, left) in enumerate(offsets.tolist())
            ]
        )

    def image(self, image: Any) -> torch.Tensor:
        """uint8 (H, W, 3) (or float CHW already in [0, 1]) -> (3, S, S) float in [-1, 1]."""
        tensor = torch.as_tensor(np.asarray(image))
        if tensor.ndim != 3:
            raise ValueError(f"an image must be (H, W, 3) uint8, got shape {tuple(tensor.shape)}")
        if tensor.shape[-1] == 3 and tensor.shape[0] != 3:
            tensor = tensor.permute(2, 0, 1)
        return self.images(tensor[None])[0]

    def reasoning_text(self, frame: Mapping[str, Any], rng: np.random.Generator) -> str | None:
        """The training target for one frame's `reasoning.*` labels, after dropout; None = no chain."""
        if rng.random() < self.processor.reasoning_dropout:
            return None
        reasoning = Reasoning.from_frame(frame)
        kept = [tag for tag in REASONING_TAGS if rng.random() >= self.processor.tag_dropout]
        text = format_reasoning(
            reasoning, include=kept or [REASONING_TAGS[int(rng.integers(len(REASONING_TAGS)))]]
        )
        return text or None

    def encode_reasoning(
        self, texts: Sequence[str | None], device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reasoning ids (B, R) ending with EOS, right-padded, and their mask; None rows are empty."""
        limit = self.config.max_reasoning_tokens
        rows = []
        for text in texts:
            ids = (
                []
                if not text
                else self.tokenizer(text, add_special_tokens=False)["input_ids"][: limit - 1]
            )
            rows.append(ids + [self.tokenizer.eos_token_id] if text else [])
        width = max((len(row) for row in rows), default=0)
        padded = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for index, row in enumerate(rows):
            padded[index, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[index, : len(row)] = True
        return padded.to(device), mask.to(device)

    def decode_reasoning(self, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
        """Generated ids (B, R) -> reasoning text per item (EOS and padding dropped)."""
        return [
            self.tokenizer.decode(row[keep].tolist(), skip_special_tokens=True).strip()
            for row, keep in zip(ids, mask, strict=True)
        ]

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return self.normalizer.features["action"].normalize(actions)

    def actions(self, normalized: torch.Tensor) -> np.ndarray:
        """Model output (B, H, A) -> robot actions in dataset units, float32."""
        actions = self.normalizer.features["action"].unnormalize(normalized.float().cpu().numpy())
        return actions.astype(np.float32)


def _reasoning_frames(batch: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-sample `reasoning.*` label dicts out of a collated batch."""
    size = len(batch["reasoning.subtask"])
    frames = []
    for index in range(size):
        frame = {}
        for key in ("reasoning.plan", "reasoning.subtask", "reasoning.move", "reasoning.objects"):
            if key in batch:
                frame[key] = batch[key][index]
        if "reasoning.gripper_px" in batch:
            frame["reasoning.gripper_px"] = batch["reasoning.gripper_px"][index].cpu().numpy()
        frames.append(frame)
    return frames
