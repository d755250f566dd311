"""Typed training configs: YAML files and dotted command-line overrides, validated strictly.

A run config is a tree of frozen dataclasses. `load_config(path, overrides)` reads YAML, applies
`section.key=value` overrides (values parsed as YAML: `optim.lr=1e-4`, `model.overrides.action_horizon=8`),
and rejects unknown keys at any depth with a "did you mean" (`vla.config.build_config`, the one
type checker of configs). The resolved config is written next to every run
(`resolved_config.yaml`) so a run can be reproduced from its own directory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vla.config import ConfigError, build_config
from vla.processor import ProcessorConfig

__all__ = ["ConfigError", "TrainConfig", "load_config", "save_config"]


@dataclass(frozen=True)
class ModelSection:
    name: str = "tiny"  # a named VLAConfig (vla/config.py)
    overrides: dict[str, Any] = field(default_factory=dict)  # VLAConfig fields to change
    tokenizer_vocab_size: int = 512  # of the byte-level BPE trained on the dataset's text


@dataclass(frozen=True)
class DataSection:
    path: str = "outputs/quickstart/dataset"
    batch_size: int = 32
    num_workers: int = 2
    validation_episodes: int = 0  # the last N episodes, held out


@dataclass(frozen=True)
class OptimSection:
    lr: float = 3e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    backbone_lr_scale: float = 1.0  # 0 freezes the backbone
    # the timm image encoder's learning rate relative to `lr` (its projector trains at `lr`);
    # 0 freezes it, and its features are then computed once per dataset frame
    vision_lr_scale: float = 1.0
    lora_rank: int = 0  # > 0: train LoRA adapters (peft) instead of the backbone's weights
    lora_alpha: float = 16.0


@dataclass(frozen=True)
class TrainerSection:
    max_steps: int = 2000
    seed: int = 0
    strategy: str = "auto"  # auto | ddp | fsdp
    devices: Any = "auto"
    accelerator: str = "auto"
    precision: str = "32-true"  # bf16-mixed on GPUs
    accumulate_grad_batches: int = 1
    ema_decay: float | None = 0.999
    checkpoint_every: int = 500
    log_every: int = 10


@dataclass(frozen=True)
class LoggingSection:
    wandb: str = "offline"  # offline | online | disabled
    project: str = "vla"
    csv: bool = True


@dataclass(frozen=True)
class EvalSection:
    """Periodic closed-loop evaluation in simulation during training (train.py wires it)."""

    every_n_steps: int = 0  # 0: off
    suite: str = "quickstart"
    episodes_per_task: int = 10  # init states 0..N-1 of every task
    num_envs: int = 2
    videos_per_task: int = 1  # the first episodes of each task are filmed and logged
    # the sim's render size for periodic evaluation; None: the training dataset's resolution
    # (from its info.json), which is what the exported checkpoint's observation spec records
    image_size: int | None = None


@dataclass(frozen=True)
class TrainConfig:
    name: str = "quickstart"
    output_dir: str = "outputs/runs"
    model: ModelSection = field(default_factory=ModelSection)
    # the policy's input/output transforms (normalization, reasoning dropout), saved with the export
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    eval: EvalSection = field(default_factory=EvalSection)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Defaults, then the YAML file, then the dotted overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config file must hold a mapping at the top level")
        raw = loaded
    for override in overrides:
        key, separator, value = override.partition("=")
        if not separator or not key:
            raise ConfigError(f"override {override!r} must look like section.key=value")
        _set_dotted(raw, key.strip(), yaml.safe_load(value))
    return build_config(TrainConfig, raw)


def save_config(config: TrainConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        tree = tree.setdefault(part, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    tree[parts[-1]] = value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
