"""One training run: data, tokenizer and model set up from a `TrainConfig`, Lightning `fit`,
periodic resumable checkpoints, and the deployable checkpoint exported at the end.

Run directory (`<output_dir>/<name>/`): `resolved_config.yaml`, `tokenizer/`,
`checkpoints/last.ckpt` (+ periodic ones; Lightning format, for resuming; each with a
`<name>.sha256` digest beside it), `logs/` (CSV and wandb), and `export/` (DESIGN.md
checkpoint: loads with `VLAPolicy.from_pretrained`).

What a run refuses: chains of thought longer than the model's `max_reasoning_tokens`
(`check_chains_fit`, naming the frame and the setting); dataset statistics that `check_policy_stats` rejects (before the first step,
naming the dataset's meta/stats.json and the key); a non-finite loss (at that step, see
`vla.training.module`); and on `resume`, a missing last.ckpt or one whose bytes no longer match
the digest recorded when it was written (`ResumeError`, naming the file and what to do; see
`vla.training.checkpoint_io`).

The export records the observation spec of the training dataset (each camera's resolution as
its meta/info.json stores it), so whoever deploys the checkpoint renders what training saw.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from data import layout
from data.features import observation_spec
from data.reader import LeRobotDatasetReader
from data.reasoning import Reasoning, format_reasoning
from data.schema import ACTION_KEY, REASONING_FIELDS, REASONING_TEXT_FIELDS, ObservationSpec
from data.stats import StatsError
from vla.checkpoint import save_checkpoint
from vla.config import VLAConfig
from vla.processor import Processor, check_policy_stats
from vla.tokenizer import load_tokenizer, train_tokenizer
from vla.training.checkpoint_io import AtomicCheckpointIO, resume_checkpoint
from vla.training.config import TrainConfig, save_config
from vla.training.frozen_features import FrozenImageFeatures
from vla.training.module import VLADataModule, VLATrainingModule

log = logging.getLogger(__name__)


def model_config_for(config: TrainConfig) -> VLAConfig:
    return VLAConfig.named(config.model.name, **config.model.overrides)


def build_tokenizer(config: TrainConfig, reader: LeRobotDatasetReader, directory: Path) -> Any:
    """The run's tokenizer: reused from `directory` when resuming, else trained on the dataset's
    instructions and a sample of its reasoning text."""
    if (directory / "tokenizer.json").exists():
        return load_tokenizer(directory)
    corpus = list(reader.tasks)
    table = reader.table
    for key in REASONING_TEXT_FIELDS:
        if key in table.column_names:
            corpus.extend(sorted(set(table[key].to_pylist()))[:2000])
    tokenizer = train_tokenizer(corpus, vocab_size=config.model.tokenizer_vocab_size)
    tokenizer.save_pretrained(directory)
    return tokenizer


def training_observation_spec(
    model_config: VLAConfig, reader: LeRobotDatasetReader
) -> ObservationSpec:
    """The model's cameras at the resolution the training dataset stores them (its info.json),
    and the state size; an error naming the dataset when it lacks a camera the model reads."""
    info = reader.root / "meta" / "info.json"
    try:
        spec = observation_spec(reader.features, model_config.cameras, source=str(info))
    except KeyError as error:
        raise ValueError(
            f"{error.args[0]}; the model wants cameras {list(model_config.cameras)}"
        ) from None
    if spec.state_dim != model_config.state_dim:
        raise ValueError(
            f"{info}: observation.state has {spec.state_dim} values, the model takes "
            f"{model_config.state_dim} (model.overrides.state_dim)"
        )
    return spec


def train(
    config: TrainConfig, resume: bool = False, callbacks: list[L.Callback] | None = None
) -> Path:
    """Train, then export the deployable checkpoint; returns its directory.

    `callbacks` are added to the run's own (e.g. `PeriodicEvaluation`, which train.py builds
    because only it may wire the simulator to the policy).
    """
    run_dir = config.run_dir
    last = resume_checkpoint(run_dir) if resume else None  # before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "resolved_config.yaml")
    L.seed_everything(config.trainer.seed, workers=True)
    model_config = model_config_for(config)
    reader = LeRobotDatasetReader(config.data.path)
    stats = dataset_stats(reader, model_config, config)
    spec = training_observation_spec(model_config, reader)
    tokenizer = build_tokenizer(config, reader, run_dir / "tokenizer")
    vocabulary = model_config.backbone_config.get("text_config", {}).get("vocab_size")
    if vocabulary is not None and len(tokenizer) > vocabulary:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the backbone's vocabulary is {vocabulary}"
        )
    if trains_reasoning(config, reader):
        check_chains_fit(reader, tokenizer, model_config.max_reasoning_tokens)
    processor_config = config.processor
    processor = Processor(model_config, processor_config, stats, tokenizer, spec)
    module = VLATrainingModule(config, model_config, processor)
    if module.encoder_is_frozen:
        if processor_config.image_shift > 0:
            log.warning(
                "processor.image_shift=%d does not apply: the frozen encoder's features are "
                "computed once from unshifted frames",
                processor_config.image_shift,
            )
        module.frozen_features = FrozenImageFeatures.for_dataset(
            module.model.backbone.image_encoder, reader, spec, model_config.image_size
        )
    data = VLADataModule(
        config, model_config, reader, precomputed_images=module.frozen_features is not None
    )

    trainer = L.Trainer(
        max_steps=config.trainer.max_steps,
        accelerator=config.trainer.accelerator,
        devices=config.trainer.devices,
        strategy=_strategy(config),
        precision=config.trainer.precision,
        gradient_clip_val=config.optim.grad_clip,
        accumulate_grad_batches=config.trainer.accumulate_grad_batches,
        log_every_n_steps=config.trainer.log_every,
        logger=_loggers(config, run_dir),
        callbacks=_callbacks(config, run_dir) + list(callbacks or []),
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
        enable_model_summary=False,
        limit_val_batches=1.0 if config.data.validation_episodes else 0,
        use_distributed_sampler=False,  # the data module builds its own epoch-seeded sampler
    )
    try:
        trainer.fit(module, datamodule=data, ckpt_path=None if last is None else str(last))
    finally:
        _finish_wandb()  # also when training stopped on an error: the next run gets its own
    export_dir = run_dir / "export"
    if trainer.is_global_zero:
        _write_run_info(run_dir, config, trainer, module)
        if config.optim.lora_rank > 0:
            from vla.training.lora import merge_lora

            merge_lora(module.model)  # the export is a plain VLAModel, loadable without peft
        save_checkpoint(
            export_dir,
            module.model,
            model_config,
            {
                key: {name: value.tolist() for name, value in values.items()}
                for key, values in stats.items()
            },
            processor=processor_config.to_dict(),
            observation_spec=spec,
            tokenizer_dir=run_dir / "tokenizer",
            train_config=config.to_dict(),
            reasoning_trained=trains_reasoning(config, reader),
        )
    return export_dir


def dataset_stats(
    reader: LeRobotDatasetReader, model_config: VLAConfig, config: TrainConfig
) -> dict[str, dict[str, Any]]:
    """The dataset's statistics, checked as a checkpoint's are before a step is trained on them
    (NaN stats would train to the end with loss = nan and fail only at export)."""
    try:
        return check_policy_stats(
            reader.stats, str(reader.root / layout.STATS_PATH), model_config, config.processor
        )
    except StatsError as error:
        raise StatsError(
            f"{error}. The statistics are wrong, or so is the data they were computed from: "
            f"`vla-data info {reader.root}` validates the data, `vla-data stats {reader.root}` "
            f"recomputes the statistics"
        ) from None


def check_chains_fit(reader: LeRobotDatasetReader, tokenizer: Any, max_tokens: int) -> None:
    """Refuse a dataset whose full chain of thought (every tag, with EOS) is longer than the
    model's `max_reasoning_tokens`: the chain would be cut mid-field, the model would learn to
    stop there, and its generated chains would never parse. LIBERO scenes with 7 objects write
    ~160-token chains, our suites' ~60."""
    table = reader.table
    present = [key for key in REASONING_FIELDS if key in table.column_names]
    columns = {key: table[key].to_pylist() for key in present}
    texts = []
    for row in range(reader.num_frames):
        frame = {key: columns[key][row] for key in present}
        if "reasoning.gripper_px" in frame:
            frame["reasoning.gripper_px"] = np.asarray(frame["reasoning.gripper_px"], np.int16)
        texts.append(format_reasoning(Reasoning.from_frame(frame)))
    lengths = [len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    longest = int(np.argmax(lengths)) if lengths else 0
    if lengths and lengths[longest] > max_tokens:
        raise ValueError(
            f"{reader.root}: the chain of thought of frame {longest} is {lengths[longest]} "
            f"tokens with EOS, over the model's max_reasoning_tokens {max_tokens}: it would be "
            f"cut mid-chain; set model.overrides.max_reasoning_tokens={lengths[longest]} or more "
            f"(or processor.reasoning_dropout=1.0 to train act-only)"
        )


def trains_reasoning(config: TrainConfig, reader: LeRobotDatasetReader) -> bool:
    """Whether some training sample carries a reasoning target: the dataset has reasoning labels
    and reasoning dropout leaves some chains in. The export records it, so a checkpoint that
    never saw a chain of thought refuses to write one instead of decoding garbage."""
    has_labels = any(field in reader.features for field in REASONING_FIELDS)
    return has_labels and config.processor.reasoning_dropout < 1.0


def _strategy(config: TrainConfig) -> str:
    """Act-only training (reasoning_dropout=1) never uses the reasoning read-out, and plain DDP
    refuses parameters without gradients; tell it to expect them."""
    strategy = config.trainer.strategy
    if strategy == "ddp" and config.processor.reasoning_dropout >= 1.0:
        return "ddp_find_unused_parameters_true"
    return strategy


def _finish_wandb() -> None:
    """Close this run's wandb run: otherwise the next `train` in the same process (a sweep, the
    tests) silently logs into it instead of starting its own."""
    import wandb

    if wandb.run is not None:
        wandb.finish()


def _write_run_info(
    run_dir: Path, config: TrainConfig, trainer: L.Trainer, module: VLATrainingModule
) -> None:
    """What a reader of the run needs to trust it: world size, effective batch, replica sync."""
    world = trainer.world_size
    info = {
        "world_size": world,
        "per_device_batch_size": config.data.batch_size,
        "effective_batch_size": config.data.batch_size
        * world
        * config.trainer.accumulate_grad_batches,
        "global_step": trainer.global_step,
        "epochs_completed": trainer.current_epoch,
        "replica_checksums": getattr(module, "replica_checksums", None),
    }
    (run_dir / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")


def _loggers(config: TrainConfig, run_dir: Path) -> list:
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    loggers = []
    if config.logging.csv:
        loggers.append(CSVLogger(str(run_dir / "logs"), name="csv", version=""))
    if config.logging.wandb != "disabled":
        loggers.append(
            WandbLogger(
                project=config.logging.project,
                name=config.name,
                save_dir=str(run_dir / "logs"),
                offline=config.logging.wandb == "offline",
            )
        )
    return loggers


def _callbacks(config: TrainConfig, run_dir: Path) -> list:
    from lightning.pytorch.callbacks import (
        EMAWeightAveraging,
        LearningRateMonitor,
        ModelCheckpoint,
        ThroughputMonitor,
    )

    callbacks: list = [
        ModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"),
            every_n_train_steps=config.trainer.checkpoint_every,
            save_last=True,
            save_top_k=-1,
            filename="{step}",
        ),
        LearningRateMonitor(logging_interval="step"),
    ]
    # samples/s (and, where Lightning knows the device's peak FLOPs, MFU) in the logs
    callbacks.append(
        ThroughputMonitor(batch_size_fn=lambda batch: batch[ACTION_KEY].shape[0], window_size=20)
    )
    if config.trainer.ema_decay is not None:
        callbacks.append(EMAWeightAveraging(decay=config.trainer.ema_decay))
    if torch.cuda.is_available() or os.environ.get("VLA_RICH_PROGRESS", "1") == "1":
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar())
    return callbacks
