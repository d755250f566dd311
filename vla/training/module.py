"""The Lightning pieces: a LightningModule around `VLAModel.compute_loss` and a data module
around `data.torch_dataset.ActionChunkDataset`.

A non-finite loss stops the run at that step, before its update, with `NonFiniteTrainingError`
naming the step; and no checkpoint holding a NaN or inf weight is ever written (the module
refuses to save one), so `last.ckpt` always holds finite weights from before the failure.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from data.reader import LeRobotDatasetReader
from data.torch_dataset import ActionChunkDataset
from vla.config import VLAConfig
from vla.model import VLAModel
from vla.processor import Processor
from vla.training.config import TrainConfig
from vla.training.frozen_features import FrozenImageFeatures


class NonFiniteTrainingError(FloatingPointError):
    """Training produced a NaN or inf loss, or weights: continuing would only train garbage."""


class VLATrainingModule(L.LightningModule):
    def __init__(
        self, train_config: TrainConfig, model_config: VLAConfig, processor: Processor
    ) -> None:
        super().__init__()
        self.train_config = train_config
        self.model = VLAModel(model_config)
        self.processor = processor
        # set by `train` when the image encoder is frozen: its features, looked up per sample
        self.frozen_features: FrozenImageFeatures | None = None
        if train_config.optim.backbone_lr_scale == 0:
            self.model.backbone.requires_grad_(False)
        encoder = self.image_encoder
        if encoder is not None and train_config.optim.vision_lr_scale == 0:
            encoder.requires_grad_(False)
        elif train_config.optim.lora_rank > 0:
            from vla.training.lora import add_lora

            add_lora(
                self.model.backbone, train_config.optim.lora_rank, train_config.optim.lora_alpha
            )

    @property
    def image_encoder(self) -> torch.nn.Module | None:
        """The timm encoder (without its projector), or None for SigLIP."""
        tower = self.model.backbone.image_encoder
        return None if tower is None else tower.model

    @property
    def encoder_is_frozen(self) -> bool:
        return self.image_encoder is not None and self.train_config.optim.vision_lr_scale == 0

    def with_frozen_features(self, batch: dict) -> dict:
        return batch if self.frozen_features is None else self.frozen_features.attach(batch)

    def training_step(self, batch: dict, batch_index: int) -> torch.Tensor:
        # Every random draw of a step (reasoning dropout, flow noise and time) comes from seeds
        # keyed by (seed, step, rank), so a resumed run draws exactly what the uninterrupted
        # run would have drawn at the same step.
        step_seed = [self.train_config.trainer.seed, self.global_step, self.global_rank]
        inputs, actions, action_is_pad = self.processor.training_inputs(
            self.with_frozen_features(batch), np.random.default_rng(step_seed)
        )
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(np.random.SeedSequence(step_seed).generate_state(1)[0]))
            losses = self.model.compute_loss(inputs, actions, action_is_pad)
        self._stop_if_non_finite(losses)
        batch_size = actions.shape[0]
        if not hasattr(self, "flops_per_batch"):
            self.flops_per_batch = self._estimated_flops(inputs, batch_size)
        self.log_dict(
            {f"train/{name}": value for name, value in losses.items()},
            prog_bar=True,
            batch_size=batch_size,
        )
        return losses["loss"]

    def _stop_if_non_finite(self, losses: dict[str, torch.Tensor]) -> None:
        """Raise at the step whose loss is NaN or inf, before its backward pass and update, so
        the weights stay those of the previous step. Under several processes every rank takes
        the same decision (one tiny all-reduce), so none is left waiting in a collective."""
        finite = bool(torch.isfinite(losses["loss"].detach()).all())
        if self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        values = ", ".join(f"{name} = {float(value.detach()):g}" for name, value in losses.items())
        raise NonFiniteTrainingError(
            f"step {self.global_step}: training loss is not finite ({values}); stopped before "
            f"this step's update, and no checkpoint is written after it (the run's last "
            f"checkpoint, if any, holds finite weights from before). Usual causes: a learning "
            f"rate too high (optim.lr, optim.warmup_steps), non-finite values in the dataset "
            f"(`vla-data info DATASET` validates it), or reduced-precision overflow "
            f"(trainer.precision)."
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Refuse to write a checkpoint whose weights are not finite (a NaN gradient under a
        finite loss would otherwise be saved, and resumed from)."""
        bad = [
            name
            for name, tensor in checkpoint.get("state_dict", {}).items()
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
        ]
        if bad:
            raise NonFiniteTrainingError(
                f"step {self.global_step}: the weights hold NaN or inf ({len(bad)} tensor(s), "
                f"e.g. {bad[0]}); not writing this checkpoint. Resume from the last one "
                f"(checkpoints/last.ckpt) with a lower optim.lr or a smaller optim.grad_clip."
            )

    def _estimated_flops(self, inputs, batch_size: int) -> int:  # noqa: ANN001
        """Training FLOPs per batch by the 6 * parameters * tokens rule, for the MFU that
        Lightning's ThroughputMonitor logs on devices whose peak FLOPs it knows."""
        with torch.no_grad():
            images = sum(
                self.model.backbone.embed_images(p[:1]).shape[1] for p in inputs.images.values()
            ) + sum(features.shape[1] for features in (inputs.image_features or {}).values())
        reasoning = 0 if inputs.reasoning_ids is None else inputs.reasoning_ids.shape[1]
        tokens = (
            images + inputs.text_ids.shape[1] + reasoning + 1 + self.model.config.action_horizon
        )
        return int(6 * sum(p.numel() for p in self.model.parameters()) * tokens * batch_size)

    def validation_step(self, batch: dict, batch_index: int) -> None:
        rng = np.random.default_rng([self.train_config.trainer.seed, batch_index])
        inputs, actions, action_is_pad = self.processor.training_inputs(
            self.with_frozen_features(batch), rng
        )
        generator = torch.Generator(device=actions.device).manual_seed(batch_index)
        noise = torch.randn(
            actions.shape, generator=generator, device=actions.device, dtype=actions.dtype
        )
        losses = self.model.compute_loss(inputs, actions, action_is_pad, noise=noise)
        self.log_dict(
            {f"val/{name}": value for name, value in losses.items()},
            batch_size=actions.shape[0],
            sync_dist=True,
        )

    def on_train_end(self) -> None:
        """Under several processes, check that every replica ended with the same weights."""
        if self.trainer.world_size < 2:
            return
        vector = torch.nn.utils.parameters_to_vector(self.model.parameters()).detach().float()
        checksums = self.all_gather(
            torch.stack(
                [vector.sum(), vector.abs().sum(), vector[:: max(1, len(vector) // 997)].sum()]
            )
        )
        self.replica_checksums = checksums.cpu().tolist()  # (world_size, 3)

    def configure_optimizers(self):  # noqa: ANN201 - Lightning's own return type
        optim = self.train_config.optim
        encoder = self.image_encoder
        encoder_ids = set() if encoder is None else {id(p) for p in encoder.parameters()}
        backbone_ids = {id(p) for p in self.model.backbone.parameters()}
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        scales = {
            "rest": 1.0,
            "backbone": optim.backbone_lr_scale,
            "vision": optim.vision_lr_scale * optim.backbone_lr_scale,
        }
        members: dict[str, list] = {name: [] for name in scales}
        for p in trainable:
            group = (
                "vision"
                if id(p) in encoder_ids
                else "backbone"
                if id(p) in backbone_ids
                else "rest"
            )
            members[group].append(p)
        groups = [
            {"params": params, "lr": optim.lr * scales[name]}
            for name, params in members.items()
            if params
        ]
        optimizer = torch.optim.AdamW(
            groups, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay
        )
        total = self.train_config.trainer.max_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_cosine(step, optim.warmup_steps, total, optim.min_lr_ratio),
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def warmup_cosine(step: int, warmup: int, total: int, floor: float) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine down to `floor` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class VLADataModule(L.LightningDataModule):
    def __init__(
        self,
        train_config: TrainConfig,
        model_config: VLAConfig,
        reader: LeRobotDatasetReader | None = None,
        precomputed_images: bool = False,
    ) -> None:
        """`reader`: the dataset already opened by the caller, so its tables are read once;
        `precomputed_images`: the model gets frozen features, so no image is decoded."""
        super().__init__()
        self.train_config = train_config
        self.model_config = model_config
        self.reader = reader
        self.precomputed_images = precomputed_images

    def setup(self, stage: str | None = None) -> None:
        data = self.train_config.data
        if self.reader is None:
            self.reader = LeRobotDatasetReader(data.path)
        episodes = [episode.index for episode in self.reader.episodes]
        held_out = (
            episodes[len(episodes) - data.validation_episodes :] if data.validation_episodes else []
        )
        if len(held_out) >= len(episodes):
            raise ValueError(
                f"{data.path}: validation_episodes={data.validation_episodes} leaves no training episodes"
            )
        training = episodes[: len(episodes) - len(held_out)]
        cameras = [] if self.precomputed_images else list(self.model_config.cameras)
        processor = self.train_config.processor
        lag = processor.stale_chain_lag if processor.stale_chain > 0 else 0
        self.train_set = ActionChunkDataset(
            self.reader,
            action_horizon=self.model_config.action_horizon,
            episodes=training,
            cameras=cameras,
            reasoning_lag=lag,
        )
        self.val_set = (
            ActionChunkDataset(
                self.reader,
                action_horizon=self.model_config.action_horizon,
                episodes=held_out,
                cameras=cameras,
                reasoning_lag=lag,
            )
            if held_out
            else None
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled by a sampler seeded with (seed, epoch) — Lightning calls `set_epoch` — so the
        order of every epoch is the same in a resumed run; each rank reads its own share."""
        data = self.train_config.data
        trainer = self.trainer
        sampler = DistributedSampler(
            self.train_set,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
            shuffle=True,
            seed=self.train_config.trainer.seed,
            drop_last=True,
        )
        return DataLoader(
            self.train_set,
            batch_size=data.batch_size,
            sampler=sampler,
            num_workers=data.num_workers,
            persistent_workers=data.num_workers > 0,
            drop_last=len(self.train_set) > data.batch_size,
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.train_config.data.batch_size, num_workers=0)
