"""Input and output transforms: everything robot- or dataset-specific, kept out of the network.

Model inputs are built by ONE pipeline of small steps, applied in order to a batch dict keyed
by the frame schema (data/schema.py), for training and inference alike:

    rename keys -> require keys -> images (check resolution, scale) -> [random shift]
      -> normalize state -> tokenize task -> [reasoning targets] -> [normalize actions]

Steps in brackets run in training only. A training batch (a collated `ActionChunkDataset`
batch) and an inference batch (observation dicts through `collate_observations`) have the same
layout, uint8 (B, H, W, 3) images included, so the same frames give the same model inputs on
both paths; that equality is a test. Predicted actions are un-normalized back to robot units by
`Processor.actions`.

The processor also carries the checkpoint's `ObservationSpec` (cameras, resolution, state
size): the image step is the one place a frame at another resolution is resized (same aspect
ratio) or refused (different aspect ratio, with a message naming the key and both shapes).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from data.normalize import MODE_STATS, FeatureNormalizer, Normalizer, NormMode
from data.reasoning import REASONING_TAGS, Reasoning, format_reasoning, snap_pixels
from data.schema import (
    ACTION_IS_PAD_KEY,
    ACTION_KEY,
    DEFAULT_CAMERA_RESOLUTION,
    REASONING_FIELDS,
    STATE_KEY,
    TASK_KEY,
    CameraSpec,
    ObservationSpec,
    image_key,
    lagged_key,
    rename_keys,
)
from data.stats import check_stats
from vla.config import VLAConfig, build_config
from vla.model import ModelInputs
from vla.robot.safety import ActionRange
from vla.tokenizer import decode_reasoning, encode_reasoning, encode_text

if TYPE_CHECKING:
    from vla.checkpoint import LoadedCheckpoint

log = logging.getLogger(__name__)

Batch = dict[str, Any]

# Keys the pipeline adds to a batch for the model (beside the frame keys it transforms in place).
TEXT_IDS = "model.text_ids"
TEXT_MASK = "model.text_mask"
REASONING_IDS = "model.reasoning_ids"
REASONING_MASK = "model.reasoning_mask"
REASONING_LOSS_ROWS = "model.reasoning_loss_rows"  # (B,) bool: chains that are also targets
# A frozen encoder's precomputed features of a camera, (B, N, C): stands in for its image.
IMAGE_FEATURES_PREFIX = "model.image_features."


def image_features_key(camera: str) -> str:
    return IMAGE_FEATURES_PREFIX + camera


@dataclass(frozen=True)
class ProcessorConfig:
    """The transforms' settings; saved as config.json's "processor" and `train_config.processor`."""

    state_norm: str = "mean_std"
    action_norm: str = "mean_std"
    # Reasoning dropout (training): the whole chain is dropped with `reasoning_dropout` (the
    # sample then teaches acting without thinking); otherwise each tag with `tag_dropout`.
    reasoning_dropout: float = 0.5
    tag_dropout: float = 0.1
    # Stale-chain training (against exposure bias): of the samples that keep a chain, this share
    # gets the chain of a frame 1..stale_chain_lag steps earlier instead, as context for the
    # expert only (no reasoning loss on it), so the expert learns to act on an imperfect chain
    # (a reused one, or one generated with errors) instead of trusting it over the images.
    stale_chain: float = 0.0
    stale_chain_lag: int = 8
    # Chain targets' pixel coordinates (gripper trace, object boxes) rounded to multiples of
    # this (data.reasoning.snap_pixels): 1 keeps exact pixels; 8 gives 16 classes per axis, so
    # a near miss is a hit instead of costing as much as any miss.
    reasoning_pixel_step: int = 1
    # Random-shift augmentation (training): each image is padded by this many pixels (edge
    # replicated, at the model's resolution) and cropped back at a random offset, so the policy
    # cannot key on exact pixel positions of a few dozen demonstrations (DrQ / Diffusion Policy).
    image_shift: int = 0
    # robot key -> our key, applied before anything else (e.g. {"observation/image": "observation.images.agentview"})
    key_map: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("reasoning_dropout", "tag_dropout", "stale_chain"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        if self.stale_chain_lag < 1:
            raise ValueError(f"stale_chain_lag must be >= 1, got {self.stale_chain_lag}")
        if self.reasoning_pixel_step < 1:
            raise ValueError(
                f"reasoning_pixel_step must be >= 1 (1 = exact pixels), got {self.reasoning_pixel_step}"
            )
        modes = [mode.value for mode in NormMode]
        for name in ("state_norm", "action_norm"):
            value = getattr(self, name)
            if value not in modes:
                close = difflib.get_close_matches(str(value), modes, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"{name} must be one of {modes}, got {value!r}{hint}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any], where: str = "processor.") -> ProcessorConfig:
        """From `to_dict`'s output (config.json's "processor"), every value type-checked; errors
        name the key as `where` + key, with a "did you mean" for a typo."""
        return build_config(cls, dict(payload), where)


def check_policy_stats(
    stats: Mapping[str, Any], source: str, config: VLAConfig, settings: ProcessorConfig
) -> dict[str, dict[str, np.ndarray]]:
    """The statistics a policy normalizes with, checked by `data.stats.check_stats`: state and
    action present, of the model's sizes, with what their normalization modes read. Training
    checks the dataset's with it before the first step; checkpoints at export and at load."""
    return check_stats(
        stats,
        source,
        sizes={STATE_KEY: config.state_dim, ACTION_KEY: config.action_dim},
        required={
            STATE_KEY: MODE_STATS[NormMode(settings.state_norm)],
            ACTION_KEY: MODE_STATS[NormMode(settings.action_norm)],
        },
    )


# ====================================================================================== steps
@dataclass(frozen=True)
class StepContext:
    """What a step may depend on besides the batch: the mode and, in training, the step's rng
    (seeded per (seed, step, rank) by the caller, so resumed runs draw the same)."""

    training: bool
    rng: np.random.Generator | None = None


class Step:
    """One transform of the pipeline: batch in, batch out (a new dict; inputs are not mutated).
    Runs in training and inference unless the subclass sets `training_only`."""

    training_only: ClassVar[bool] = False

    def __call__(self, batch: Batch, context: StepContext) -> Batch:
        raise NotImplementedError


@dataclass
class RenameKeys(Step):
    """A robot's key names -> ours (ProcessorConfig.key_map); the only place keys are renamed."""

    key_map: Mapping[str, str]

    def __call__(self, batch: Batch, context: StepContext) -> Batch:
        return rename_keys(batch, self.key_map) if self.key_map else dict(batch)


@dataclass
class RequireKeys(Step):
    """Fail early, naming every missing key, instead of at the first step that reads one."""

    keys: tuple[str, ...]
    training_keys: tuple[str, ...] = ()
    # key -> another key that stands in for it (a camera's image -> its precomputed features)
    alternatives: Mapping[str, str] = field(default_factory=dict)

    def __call__(self, batch: Batch, context: StepContext) -> Batch:
        needed = self.keys + (self.training_keys if context.training else ())
        missing = [
            key
            for key in needed
            if key not in batch and self.alternatives.get(key, key) not in batch
        ]
        if missing:
            raise KeyError(
                f"the {'training batch' if context.training else 'observation'} lacks {missing}; "
                f"it has {sorted(batch)}"
            )
        return batch


class ObservationMismatchError(ValueError):
    """An observation that does not fit the policy's observation spec (camera shape, dtype): the
    caller sent something wrong, as opposed to the model failing on a valid input."""


@dataclass
class PrepareImages(Step):
    """uint8 (B, H, W, 3) per camera -> float (B, 3, S, S) in [-1, 1], S = VLAConfig.image_size.

    Frames must come at the spec's resolution (what the policy was trained on). Another
    resolution with the same aspect ratio is resized (noted once per camera and shape): the
    scene is the same, only sampled more or less finely. Another aspect ratio is refused: it
    would stretch the scene, and reasoning pixel coordinates would no longer line up.
    """

    spec: ObservationSpec
    image_size: int
    _noted: set[tuple[str, tuple[int, int]]] = field(default_factory=set, repr=False)

    def __call__(self, batch: Batch, context: StepContext) -> Batch:
        out = dict(batch)
        for camera in self.spec.cameras:
            if image_features_key(camera.name) in batch:
                continue  # this camera's image was encoded once, ahead of training
            frames = self.checked(camera, batch[camera.key])  # (B, H, W, 3) uint8
            pixels = frames.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W) in [0, 1]
            if pixels.shape[-2:] != (self.image_size, self.image_size):
                pixels = F.interpolate(
                    pixels,
                    size=(self.image_size, self.image_size),
                    mode="bilinear",
                    antialias=True,
                    align_corners=False,
                )
            out[camera.key] = pixels * 2.0 - 1.0  # (B, 3, S, S)
        return out

    def checked(self, camera: CameraSpec, frames: Any) -> torch.Tensor:
        """The frames as a (B, H, W, 3) uint8 tensor, or an error naming the key and shapes."""
        expected = camera.shape
        if isinstance(frames, list):  # `collate_observations` could not stack them
            shapes = sorted({tuple(np.shape(frame)) for frame in frames})
            raise ObservationMismatchError(
                f"{camera.key}: the observations of one call hold images of different shapes "
                f"{shapes}; send every camera at {expected}"
            )
        frames = torch.as_tensor(frames)
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ObservationMismatchError(
                f"{camera.key}: expected uint8 images of shape {expected} (H, W, 3), got "
                f"{str(frames.dtype).removeprefix('torch.')} of shape {tuple(frames.shape[1:])}"
            )
        height, width = frames.shape[1], frames.shape[2]
        if (height, width) == (camera.height, camera.width):
            return frames
        if height * camera.width != width * camera.height:
            raise ObservationMismatchError(
                f"{camera.key}: got images of shape {(height, width, 3)}, the policy expects "
                f"{expected} (its checkpoint's observation spec); the aspect ratio differs, so "
                f"resizing would distort the scene: render this camera at {camera.height}x"
                f"{camera.width} (or a multiple of it)"
            )
        if (camera.key, (height, width)) not in self._noted:
            self._noted.add((camera.key, (height, width)))
            log.warning(
                "%s: got %dx%d images, the policy was trained on %dx%d; resizing (same aspect ratio)",
                camera.key, height, width, camera.height, camera.width,
            )  # fmt: skip
        return frames


@dataclass
class RandomShift(Step):
    """Training augmentation: each (3, S, S) image is shifted by up to `pixels` (edge padded)."""

    cameras: tuple[str, ...]
    pixels: int
    training_only: ClassVar[bool] = True

    def __call__(self, batch: Batch, context: StepContext) -> Batch:
        if self.pixels <= 0:
            return batch
        out = dict(batch)
        for camera in self.cameras:  # in camera order: the rng draws are part of the contract
            if image_features_key(camera) in batch:
                continue  # precomputed features of unshifted frames: nothing to shift
            out[image_key(camera)] = random_shift(
                batch[image_key(camera)], self.pixels, context.rng
            )
        return out


def random_shift(images: torch.Tensor, pixels: int, rng: np.random.Generator) -> torch.Tensor:
    """(B, 3, S, S) -> the same shape, each image translated by up to `pixels` in each axis."""
    if pixels <= 0:
        return images
    size = images.shape[-1]
    padded = F.pad(images, (pixels, pixels, pixels, pixels), mode="replicate")
    offsets = rng.integers(0, 2 * pixels + 1, size=(images.shape[0], 2))
    return torch.stack(
        [
            padded[index, :, top : top + size, left : left + size]
            for index, (top, left) in enumerate(offsets.tolist())
        ]
    )


@dataclass
class NormalizeState(Step):
    """float (B, D) proprioception -> normalized float32 (B, D), D checked against the model."""

    normalizer: FeatureNormalizer
    state_dim: int

    def __call__(self, batch: Batch, context: StepContext) -> Batch:
        state = torch.as_tensor(batch[STATE_KEY])
        state = state.reshape(state.shape[0], -1).float()  # (B, D)
        if state.shape[1] != self.state_dim:
            raise ValueError(
                f"{STATE_KEY} has {state.shape[1]} values, the model takes {self.state_dim}"
            )
        return {**batch, STATE_KEY: self.normalizer.normalize(state)}


@dataclass
class TokenizeTask(Step):
    """The instruction text -> BOS-prefixed ids (B, L) and their mask, on the batch's device."""

    tokenizer: Any
    max_tokens: int

    def __call__(self, batch: Batch, context: StepContext) -> Batch:
        device = batch[STATE_KEY].device
        tasks = batch[TASK_KEY]
        tasks = [tasks] if isinstance(tasks, str) else [str(task) for task in tasks]
        ids, mask = encode_text(self.tokenizer, tasks, self.max_tokens)
        return {**batch, TEXT_IDS: ids.to(device), TEXT_MASK: mask.to(device)}


@dataclass
class ReasoningTargets(Step):
    """Training: the frames' `reasoning.*` labels -> reasoning target ids (B, R), after dropout.

    Whole chains are dropped with `reasoning_dropout` (those samples teach acting without
    thinking) and, otherwise, single tags with `tag_dropout`. Batches without labels pass through.
    """

    tokenizer: Any
    max_tokens: int
    reasoning_dropout: float
    tag_dropout: float
    stale_chain: float = 0.0
    pixel_step: int = 1
    training_only: ClassVar[bool] = True

    def __call__(self, batch: Batch, context: StepContext) -> Batch:
        present = [key for key in REASONING_FIELDS if key in batch]
        if not present:
            return batch
        size = len(batch[present[0]])
        lagged = self.stale_chain > 0 and all(lagged_key(key) in batch for key in present)
        if self.stale_chain > 0 and not lagged:
            raise KeyError(
                f"stale_chain={self.stale_chain} needs the earlier frame's labels "
                f"({lagged_key(present[0])}, ...): build the dataset with reasoning_lag > 0"
            )
        texts, targets = [], []
        for index in range(size):
            frame = {key: _frame_value(batch[key][index]) for key in present}
            stale = lagged and context.rng.random() < self.stale_chain
            if stale:
                frame = {key: _frame_value(batch[lagged_key(key)][index]) for key in present}
            texts.append(self.text(frame, context.rng))
            targets.append(not stale)
        device = batch[STATE_KEY].device
        ids, mask = encode_reasoning(self.tokenizer, texts, self.max_tokens, device)
        out = {**batch, REASONING_IDS: ids, REASONING_MASK: mask}
        if lagged:
            out[REASONING_LOSS_ROWS] = torch.tensor(targets, dtype=torch.bool, device=device)
        return out

    def text(self, frame: Mapping[str, Any], rng: np.random.Generator) -> str | None:
        """One frame's target text after dropout; None = no chain for this sample."""
        if rng.random() < self.reasoning_dropout:
            return None
        reasoning = snap_pixels(Reasoning.from_frame(frame), self.pixel_step)
        kept = [tag for tag in REASONING_TAGS if rng.random() >= self.tag_dropout]
        text = format_reasoning(
            reasoning, include=kept or [REASONING_TAGS[int(rng.integers(len(REASONING_TAGS)))]]
        )
        return text or None


def _frame_value(value: Any) -> Any:
    """A collated label back to what `Reasoning.from_frame` reads (tensors as numpy arrays)."""
    return value.cpu().numpy() if isinstance(value, torch.Tensor) else value


@dataclass
class NormalizeActions(Step):
    """Training: the action chunk (B, H, A) -> normalized float32; the padding mask as bool."""

    normalizer: FeatureNormalizer
    training_only: ClassVar[bool] = True

    def __call__(self, batch: Batch, context: StepContext) -> Batch:
        return {
            **batch,
            ACTION_KEY: self.normalizer.normalize(batch[ACTION_KEY].float()),
            ACTION_IS_PAD_KEY: batch[ACTION_IS_PAD_KEY].bool(),
        }


@dataclass(frozen=True)
class Pipeline:
    """The steps, applied in order; training-only steps are skipped at inference."""

    steps: tuple[Step, ...]

    def __call__(
        self, batch: Mapping[str, Any], training: bool, rng: np.random.Generator | None = None
    ) -> Batch:
        if training and rng is None:
            raise ValueError("a training pass needs the step's rng (reasoning dropout, shifts)")
        context = StepContext(training=training, rng=rng)
        out = dict(batch)
        for step in self.steps:
            if training or not step.training_only:
                out = step(out, context)
        return out

    @property
    def names(self) -> list[str]:
        return [type(step).__name__ for step in self.steps]


def collate_observations(observations: Sequence[Mapping[str, Any]]) -> Batch:
    """Observation dicts (DESIGN.md format) -> one batch laid out like a collated training batch.

    Arrays are stacked into tensors (B, ...) as the DataLoader stacks dataset samples, and text
    becomes a list of B strings. Values that cannot be stacked (images of different shapes)
    stay a list, for the step that reads them to report. Keys missing from some observations
    are left out, so `RequireKeys` names them.
    """
    if not observations:
        raise ValueError("no observations to process")
    keys = [key for key in observations[0] if all(key in o for o in observations[1:])]
    batch: Batch = {}
    for key in keys:
        values = [observation[key] for observation in observations]
        if all(isinstance(value, str) for value in values):
            batch[key] = [str(value) for value in values]
            continue
        arrays = [np.asarray(value) for value in values]
        stackable = all(a.shape == arrays[0].shape and a.dtype == arrays[0].dtype for a in arrays)
        if stackable and arrays[0].dtype.kind in "biuf":
            batch[key] = torch.from_numpy(np.stack(arrays))
        else:
            batch[key] = arrays
    return batch


def batch_to_device(batch: Mapping[str, Any], device: torch.device | str) -> Batch:
    """Tensors moved to `device` (what Lightning does to a training batch); the rest as is."""
    return {
        key: value.to(device) if isinstance(value, torch.Tensor) else value
        for key, value in batch.items()
    }


# ====================================================================================== processor
class Processor:
    """The policy's input pipeline and output transform, built from a checkpoint's parts.

    `config` is the model's VLAConfig, `settings` the ProcessorConfig (normalization modes,
    dropout, key map), `observation_spec` the cameras/resolution/state the policy was trained
    on (default: the model's cameras at DEFAULT_CAMERA_RESOLUTION, for hand-built processors).
    """

    def __init__(
        self,
        config: VLAConfig,
        settings: ProcessorConfig,
        stats: Mapping[str, Mapping[str, Any]],
        tokenizer: Any,
        observation_spec: ObservationSpec | None = None,
    ) -> None:
        missing = [key for key in (STATE_KEY, ACTION_KEY) if key not in stats]
        if missing:
            raise KeyError(
                f"normalization stats lack {missing}; they come from the dataset's meta/stats.json"
            )
        spec = observation_spec or ObservationSpec.uniform(
            config.cameras, DEFAULT_CAMERA_RESOLUTION, config.state_dim
        )
        if spec.camera_names != tuple(config.cameras) or spec.state_dim != config.state_dim:
            raise ValueError(
                f"the observation spec (cameras {list(spec.camera_names)}, state_dim "
                f"{spec.state_dim}) does not match the model (cameras {list(config.cameras)}, "
                f"state_dim {config.state_dim})"
            )
        self.config = config
        self.settings = settings
        self.observation_spec = spec
        self.tokenizer = tokenizer
        self.normalizer = Normalizer(
            stats, {STATE_KEY: settings.state_norm, ACTION_KEY: settings.action_norm}
        )
        self._action_stats = stats[ACTION_KEY]  # min/max bound what the server may send
        self.reasoning = ReasoningTargets(
            tokenizer,
            config.max_reasoning_tokens,
            settings.reasoning_dropout,
            settings.tag_dropout,
            settings.stale_chain,
            settings.reasoning_pixel_step,
        )
        self.pipeline = Pipeline(
            (
                RenameKeys(settings.key_map),
                RequireKeys(
                    (*spec.image_keys, STATE_KEY, TASK_KEY),
                    (ACTION_KEY, ACTION_IS_PAD_KEY),
                    {camera.key: image_features_key(camera.name) for camera in spec.cameras},
                ),
                PrepareImages(spec, config.image_size),
                RandomShift(tuple(config.cameras), settings.image_shift),
                NormalizeState(self.normalizer.features[STATE_KEY], config.state_dim),
                TokenizeTask(tokenizer, config.max_text_tokens),
                self.reasoning,
                NormalizeActions(self.normalizer.features[ACTION_KEY]),
            )
        )

    def action_range(self, margin: float) -> ActionRange:
        """The range this checkpoint's actions may take (robot units; see `ActionRange`)."""
        stats = self._action_stats
        missing = [name for name in ("min", "max") if name not in stats]
        if missing:
            raise KeyError(f"the action stats lack {missing}, which bound the served actions")
        return ActionRange.from_stats(
            stats["min"], stats["max"], self.normalizer.features[ACTION_KEY].scale, margin
        )

    @classmethod
    def from_checkpoint(cls, loaded: LoadedCheckpoint) -> Processor:
        """The processor a checkpoint was exported with (settings, stats, tokenizer, spec)."""
        from vla.tokenizer import load_tokenizer

        if loaded.tokenizer_dir is None:
            raise FileNotFoundError(
                f"{loaded.directory}: the checkpoint has no tokenizer/ directory"
            )
        return cls(
            loaded.config,
            ProcessorConfig.from_dict(loaded.processor),
            loaded.stats,
            load_tokenizer(loaded.tokenizer_dir),
            observation_spec=loaded.observation_spec,
        )

    # ------------------------------------------------------------------ the two entry points
    def inputs(
        self, observations: Sequence[Mapping[str, Any]], device: torch.device | str = "cpu"
    ) -> ModelInputs:
        """Observation dicts -> normalized model inputs on `device` (inference)."""
        batch = batch_to_device(collate_observations(observations), device)
        return self.model_inputs(self.pipeline(batch, training=False))

    def training_inputs(
        self, batch: Mapping[str, Any], rng: np.random.Generator
    ) -> tuple[ModelInputs, torch.Tensor, torch.Tensor]:
        """A collated `ActionChunkDataset` batch -> (model inputs with reasoning targets after
        dropout, normalized actions (B, H, A), action_is_pad (B, H)), on the batch's device."""
        out = self.pipeline(batch, training=True, rng=rng)
        return self.model_inputs(out), out[ACTION_KEY], out[ACTION_IS_PAD_KEY]

    def model_inputs(self, batch: Mapping[str, Any]) -> ModelInputs:
        """The pipeline's output batch -> the model's input dataclass."""
        cameras = self.config.cameras
        features = {
            camera: batch[image_features_key(camera)]
            for camera in cameras
            if image_features_key(camera) in batch
        }
        return ModelInputs(
            images={
                camera: batch[image_key(camera)] for camera in cameras if camera not in features
            },
            text_ids=batch[TEXT_IDS],
            text_mask=batch[TEXT_MASK],
            state=batch[STATE_KEY],
            reasoning_ids=batch.get(REASONING_IDS),
            reasoning_mask=batch.get(REASONING_MASK),
            reasoning_loss_rows=batch.get(REASONING_LOSS_ROWS),
            image_features=features or None,
        )

    # ------------------------------------------------------------------ pieces callers reuse
    def random_shift(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """(B, 3, S, S) -> the same shape, shifted by up to `settings.image_shift` pixels."""
        return random_shift(images, self.settings.image_shift, rng)

    def reasoning_text(self, frame: Mapping[str, Any], rng: np.random.Generator) -> str | None:
        """The training target for one frame's `reasoning.*` labels, after dropout; None = no chain."""
        return self.reasoning.text(frame, rng)

    def encode_reasoning(
        self, texts: Sequence[str | None], device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reasoning ids (B, R) ending with EOS, right-padded, and their mask; None rows are empty."""
        return encode_reasoning(self.tokenizer, texts, self.config.max_reasoning_tokens, device)

    def decode_reasoning(self, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
        """Generated ids (B, R) -> reasoning text per item (EOS and padding dropped)."""
        return decode_reasoning(self.tokenizer, ids, mask)

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return self.normalizer.features[ACTION_KEY].normalize(actions)

    def actions(self, normalized: torch.Tensor) -> np.ndarray:
        """Model output (B, H, A) -> robot actions in dataset units, float32."""
        actions = self.normalizer.features[ACTION_KEY].unnormalize(normalized.float().cpu().numpy())
        return actions.astype(np.float32)
