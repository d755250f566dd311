"""Model configuration: one frozen dataclass, validated at construction, passed whole to modules.

Named configurations live in `NAMED_CONFIGS` (a registry, not if/elif): `tiny` trains on two CPU
cores; `tiny-fast` is `tiny` with 4x fewer image tokens; `tiny-timm` swaps SigLIP for a timm
ResNet; `tiny-effnet` for ImageNet-pretrained EfficientNet-Lite0 (the quickstart's), and
`tiny-effnet-s16` for its finer stride-16 map; `pi0` has the shape of pi0 (PaliGemma-3B
backbone, ~300M expert) for GPU runs and benchmarks. `VLAConfig.named("tiny", action_horizon=8)` builds one with overrides; unknown names
and keys fail with a "did you mean".

`build_config` is the one place plain data (YAML, JSON, overrides) becomes a config dataclass:
every value is checked against the field's type hint (no bool for an int, no string for a
tuple, tuple lengths and element types, mappings), unknown keys get a "did you mean", and the
error names the dotted key and what was expected. The training config, `VLAConfig.from_dict` /
`replace` and `ProcessorConfig.from_dict` all go through it; checkpoint loading adds the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from data.schema import ACTION_DIM, DEFAULT_CAMERAS, STATE_DIM

OBJECTIVES = ("flow", "diffusion")


@dataclass(frozen=True)
class VLAConfig:
    # --- backbone (a HF VLM behind an adapter; see vla/backbone.py)
    backbone: str = "paligemma"
    # kwargs of the family's HF config class when building from scratch (the tiny model);
    # ignored when `pretrained_path` names a local directory saved with `save_pretrained`
    backbone_config: dict[str, Any] = field(default_factory=dict)
    pretrained_path: str | None = None
    # "siglip": the family's own vision tower; "timm:<model name>": any timm model + a projector
    # (vla/vision.py), e.g. a small convnet for fast CPU configs
    vision_tower: str = "siglip"
    vision_tower_kwargs: dict[str, Any] = field(default_factory=dict)
    # ImageNet weights a registry package ships (vla/pretrained.py), loaded into a timm tower
    # when the model is first built; a checkpoint holds the trained weights and drops this name
    vision_pretrained: str | None = None
    vision_max_tokens: int | None = None
    # a timm tower's tokens from an earlier, finer map: index into its feature_info (None: the
    # last map). tiny-effnet-s16 uses 3, EfficientNet-Lite0's stride-16 stage.
    vision_feature_stage: int | None = None
    # a learned per-cell position embedding added to a timm convnet's tokens (started at 2-D
    # sines and cosines), so the decoder can tell where in the image a token lies
    vision_position_embedding: bool = False
    # --- inputs
    cameras: tuple[str, ...] = DEFAULT_CAMERAS
    # the model's internal square image size; cameras may render at another resolution (the
    # checkpoint's ObservationSpec), and the processor resizes from that to this
    image_size: int = 64
    max_text_tokens: int = 24
    state_dim: int = STATE_DIM
    action_dim: int = ACTION_DIM
    # --- action expert: same layer count and attention geometry as the backbone, its own width
    expert_hidden_size: int = 64
    expert_intermediate_size: int = 128
    # --- chain of thought: reasoning text generated after the instruction, read by the expert
    max_reasoning_tokens: int = 96
    reasoning_loss_weight: float = 1.0
    # --- objective
    action_horizon: int = 10
    objective: str = "flow"
    num_inference_steps: int = 10
    flow_time_beta: tuple[float, float] = (1.5, 1.0)  # t ~ Beta(a, b), as pi0 samples it
    diffusion_train_steps: int = 100
    diffusion_scheduler: str = "ddim"  # or "ddpm" (diffusers' schedulers; DDIM is deterministic)
    # --- memory: recompute each layer's activations in the backward pass (large configs)
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.diffusion_scheduler not in ("ddim", "ddpm"):
            raise ValueError(
                f"diffusion_scheduler must be 'ddim' or 'ddpm', got {self.diffusion_scheduler!r}"
            )
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"objective must be one of {OBJECTIVES}, got {self.objective!r}{_did_you_mean(self.objective, OBJECTIVES)}"
            )
        for name in (
            "image_size",
            "max_text_tokens",
            "state_dim",
            "action_dim",
            "expert_hidden_size",
            "expert_intermediate_size",
            "action_horizon",
            "num_inference_steps",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.cameras:
            raise ValueError("at least one camera is needed")
        if self.vision_tower != "siglip" and not self.vision_tower.startswith("timm:"):
            raise ValueError(
                f"vision_tower must be 'siglip' or 'timm:<model name>', got {self.vision_tower!r}"
            )
        if self.vision_position_embedding and self.vision_tower == "siglip":
            raise ValueError(
                "vision_position_embedding is for a timm:<convnet> tower; SigLIP embeds "
                "positions itself"
            )
        if self.vision_pretrained is not None and self.vision_tower == "siglip":
            raise ValueError(
                f"vision_pretrained={self.vision_pretrained!r} needs a timm vision tower "
                f"(vision_tower='timm:<model name>'); SigLIP loads with the backbone's pretrained_path"
            )

    @classmethod
    def named(cls, name: str, **overrides: Any) -> VLAConfig:
        if name not in NAMED_CONFIGS:
            raise KeyError(
                f"no model config {name!r}{_did_you_mean(name, NAMED_CONFIGS)}; known: {', '.join(NAMED_CONFIGS)}"
            )
        return NAMED_CONFIGS[name].replace(**overrides)

    def replace(self, **overrides: Any) -> VLAConfig:
        """A copy with `overrides`, each type-checked (a list for a tuple field is accepted)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = [key for key in overrides if key not in known]
        if unknown:
            hints = "".join(_did_you_mean(key, known) for key in unknown)
            raise KeyError(f"unknown VLAConfig key(s) {unknown}{hints}")
        hints = _type_hints(type(self))
        checked = {key: coerce(hints[key], value, key) for key, value in overrides.items()}
        return dataclasses.replace(self, **checked)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any], where: str = "") -> VLAConfig:
        """From `to_dict`'s output (config.json's "model"); `where` prefixes keys in errors."""
        return build_config(cls, payload, where)


def _did_you_mean(name: str, options: Any, prefix: str = "") -> str:
    close = difflib.get_close_matches(str(name), [str(option) for option in options], n=1)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


# ====================================================================================== typed construction
class ConfigError(ValueError):
    """A config (YAML file, override, checkpoint config.json) names an unknown key or holds a
    value of the wrong type; the message starts with the dotted key."""


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build_config(cls: type, raw: Any, where: str = "") -> Any:
    """`cls(**raw)` with every value checked against its field's type hint, nested dataclasses
    built the same way; `where` ("optim.") prefixes the keys named in errors.

    A ValueError the dataclass raises itself (a value out of range) is re-raised as ConfigError
    prefixed with the section, so whoever reads it knows where to look.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{where.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    fields = [f.name for f in dataclasses.fields(cls)]
    hints = _type_hints(cls)
    values = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(
                f"{where}{key}: unknown key{_did_you_mean(key, fields, where)}; "
                f"valid keys: {', '.join(fields)}"
            )
        values[key] = coerce(hints[key], value, f"{where}{key}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigError) or not where:
            raise
        raise ConfigError(f"{where.rstrip('.')}: {error}") from None


def coerce(hint: Any, value: Any, where: str) -> Any:
    """`value` checked against the type `hint` (as YAML or JSON gives it: lists become tuples,
    ints become floats); a ConfigError naming `where` and what was expected otherwise."""
    if dataclasses.is_dataclass(hint):
        return build_config(hint, value, where + ".")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return coerce(next(option for option in args if option is not type(None)), value, where)
    if hint is Any:
        return value
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        if len(args) != 2:
            return dict(value)
        return {
            coerce(args[0], key, f"{where} key {key!r}"): coerce(args[1], item, f"{where}.{key}")
            for key, item in value.items()
        }
    if hint in (tuple, list) or origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        # tuple[float, float]: one type per position; tuple[str, ...] and list[str]: one for all
        fixed = origin is tuple and args and args[-1] is not Ellipsis
        if fixed and len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {list(value)!r}")
        items = args if fixed else args[:1] * len(value)
        checked = (
            [
                coerce(h, entry, f"{where}[{i}]")
                for i, (h, entry) in enumerate(zip(items, value, strict=True))
            ]
            if items
            else list(value)  # a bare `tuple` / `list`: the entries as they are
        )
        return tuple(checked) if tuple in (hint, origin) else checked
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if hint in (int, float, str, bool) and (
        not isinstance(value, hint) or (hint is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


TINY_PALIGEMMA = {
    "vision_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 64,
        "patch_size": 8,
        "vision_use_head": False,  # PaliGemma uses the patch tokens, not SigLIP's pooling head
    },
    "text_config": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "vocab_size": 512,
    },
    "projection_dim": 128,  # the projector maps image features to the decoder's width
    "vocab_size": 512,
}

TINY_FAST_PALIGEMMA = {
    **TINY_PALIGEMMA,
    "vision_config": {**TINY_PALIGEMMA["vision_config"], "patch_size": 16},
}

PI0_PALIGEMMA = {
    "vision_config": {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "image_size": 224,
        "patch_size": 14,
        "vision_use_head": False,
    },
    "text_config": {
        "hidden_size": 2048,
        "intermediate_size": 16384,
        "num_hidden_layers": 18,
        "num_attention_heads": 8,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "vocab_size": 257152,
    },
    "projection_dim": 2048,
}

# Pretrained vision for CPU runs: ImageNet EfficientNet-Lite0 (installed offline, see
# vla/pretrained.py) on the cameras' own 128x128 frames; its stride-32 map is 4x4 = 16 tokens per
# camera, as many as tiny-fast's. Trained frozen with per-frame features computed once
# (optim.vision_lr_scale=0) or fine-tuned at a lower learning rate.
TINY_EFFNET = VLAConfig(
    backbone_config=TINY_FAST_PALIGEMMA,
    image_size=128,
    vision_tower="timm:tf_efficientnet_lite0",
    vision_pretrained="efficientnet_lite0",
    # a quickstart chain with three object boxes is ~100 tokens: 96 cut off the last box
    max_reasoning_tokens=112,
)

NAMED_CONFIGS: dict[str, VLAConfig] = {
    "tiny": VLAConfig(backbone_config=TINY_PALIGEMMA, image_size=64),
    "tiny-timm": VLAConfig(
        backbone_config=TINY_PALIGEMMA, image_size=64, vision_tower="timm:resnet10t"
    ),
    "tiny-effnet": TINY_EFFNET,
    # The same encoder's stride-16 stage: 8x8 = 64 tokens of 112 channels per camera at 128 px,
    # 4x tiny-effnet's tokens at a quarter of their cells' size, for wide layouts where an object
    # must be found in the image (the 14-task tabletop suite), not from the layout's prior.
    "tiny-effnet-s16": dataclasses.replace(TINY_EFFNET, vision_feature_stage=3),
    # The quickstart's: 16x16 patches give 16 image tokens per camera instead of 64, which makes
    # an act-only training step 2.3x cheaper on a 2-core CPU (benchmarks/train_step.py).
    "tiny-fast": VLAConfig(backbone_config=TINY_FAST_PALIGEMMA, image_size=64),
    "pi0": VLAConfig(
        backbone_config=PI0_PALIGEMMA,
        activation_checkpointing=True,
        image_size=224,
        max_text_tokens=48,
        expert_hidden_size=1024,
        expert_intermediate_size=4096,
        action_horizon=50,
    ),
}
