"""A vision tower built from any timm model: an alternative to the backbone's own SigLIP.

Why: the PaliGemma adapter's SigLIP tower is the right choice for pi0-size runs, but fast CPU
configs (and experiments with other image encoders) want a small convnet or ViT, and timm has
hundreds of them behind one factory. `TimmVisionTower` turns any `timm.create_model` network into
image tokens with the backbone's contract: (B, 3, H, W) float in [-1, 1] -> (B, N, out_width).

How, and why this way:
- The model is created with `num_classes=0, global_pool=""` and run through `forward_features`,
  not with `features_only=True`. `forward_features` exists on every timm model and returns the
  last spatial representation: a (B, C, h, w) map for convnets ((B, h, w, C) where the model says
  `output_fmt == "NHWC"`, e.g. Swin) and a (B, T, C) token sequence for ViTs, final norm included.
  `features_only` wraps convnets in a new module tree (whose state_dict no longer matches timm's
  own checkpoints) and is missing or different for many ViTs.
- Prefix tokens (class/register/distillation) are dropped via `model.num_prefix_tokens`: the
  decoder gets one token per image patch, like PaliGemma's.
- Inputs are converted from [-1, 1] to the normalization the model was trained with (the mean/std
  of its `pretrained_cfg`), so local pretrained weights see the inputs they expect.
- Output shapes come from one probe of `forward_features` under torch's `FakeTensorMode` (shapes
  only, no arithmetic), cached per image size; a real forward on zeros is the fallback. The same
  probe finds parameters that `forward_features` never uses (e.g. MobileNetV3's `conv_head`, part
  of its classifier head) and freezes them: a parameter that never gets a gradient breaks DDP.
- Weights are never downloaded: `pretrained_path` names a local file (safetensors or a timm
  checkpoint) and is loaded strictly, with an error naming the file and the keys that differ.
  `vla/pretrained.py` makes such a file from weights a registry package ships.
- A pretrained encoder keeps its BatchNorm statistics: its timm model stays in eval mode while the
  rest trains (small robot batches would otherwise overwrite ImageNet's statistics), so the same
  frame gives the same features in training and at inference, and features of a frozen encoder
  can be computed once per dataset frame (`encode`) and fed to `project` instead.
- Wherever BatchNorm uses its running statistics and no gradient is needed (inference, and a
  frozen encoder's feature pass), `encode` runs a copy with every BatchNorm folded into the
  convolution before it (`fold_batchnorm`), laid out channels-last: the same function up to float
  rounding (relative difference ~3e-6 on EfficientNet-Lite0), at 1.4x (a policy call's batch) to
  2.3x (the feature pass's) the speed on this CPU, where eval-mode BatchNorm is a separate pass
  over every activation map (benchmarks/encoder_throughput.py). The copy is checked against the
  model once when made, and remade whenever a weight, device or dtype changes.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

ImageSize = int | tuple[int, int]


@dataclass(frozen=True)
class FeatureLayout:
    """What `forward_features` returns for one image size, after prefix tokens are dropped."""

    channels: int  # C
    length: int  # tokens before pooling: h * w for a grid, T - prefix for a sequence
    grid: tuple[int, int] | None  # (h, w) when the tokens form a known grid, else None


class TimmVisionTower(nn.Module):
    """Any timm backbone + a linear projector: (B, 3, H, W) in [-1, 1] -> (B, N, out_width).

    `max_tokens` caps N by adaptive average pooling over the token grid (the largest grid with
    the image's aspect ratio that has at most `max_tokens` cells), so a high-resolution convnet
    map does not flood the decoder's context. `feature_stage` takes the tokens from an earlier,
    finer map instead of the last one: index k of the model's `feature_info` (timm's
    `forward_intermediates`; for EfficientNet-Lite0 at 128 px, stage 3 is the stride-16 map,
    8 x 8 cells of 112 channels, where the default is the 4 x 4 x 1280 head). The layers after
    it are frozen, as unused. `**model_kwargs` go to `timm.create_model` (e.g. `img_size=64`
    for a ViT, `dynamic_img_size=True`, `drop_path_rate=0.1`).
    """

    def __init__(
        self,
        model_name: str,
        image_size: int,
        out_width: int,
        *,
        pretrained: bool = False,
        pretrained_path: str | Path | None = None,
        max_tokens: int | None = None,
        feature_stage: int | None = None,
        keep_norm_statistics: bool = False,
        position_embedding: bool = False,
        **model_kwargs: Any,
    ) -> None:
        super().__init__()
        if pretrained and pretrained_path is None:
            raise ValueError(
                f"pretrained=True for {model_name!r} but no pretrained_path: weights are never "
                f"downloaded; save the timm model's weights locally (safetensors.torch.save_file("
                f"model.state_dict(), path)) and pass pretrained_path=path"
            )
        if image_size < 1 or out_width < 1:
            raise ValueError(
                f"image_size and out_width must be >= 1, got {image_size} and {out_width}"
            )
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or None, got {max_tokens}")
        self.model_name = model_name
        self.image_size = image_size
        self.max_tokens = max_tokens
        self.model = _create_timm_model(model_name, model_kwargs)
        self.feature_stage = _checked_stage(self.model, model_name, feature_stage)
        if pretrained_path is not None:
            load_timm_weights(self.model, pretrained_path, model_name)
        # set from the config, not from whether a file was loaded: a checkpoint rebuilds the
        # tower without the file and must behave as the trained one did
        self.keeps_norm_statistics = keep_norm_statistics or pretrained_path is not None
        scale, shift = _input_affine(self.model)
        # [-1, 1] -> the model's normalization in one multiply-add; derived from the model's
        # config, so not saved (non-persistent) and checkpoints hold only learned weights.
        self.register_buffer("input_scale", scale, persistent=False)  # (1, 3, 1, 1)
        self.register_buffer("input_shift", shift, persistent=False)  # (1, 3, 1, 1)
        self._layouts: dict[tuple[int, int], FeatureLayout] = {}
        size = _pair(image_size)
        layout, unused = _probe(self.model, size, self.feature_stage, find_unused=True)
        self._layouts[size] = layout
        # Frozen, not deleted: the state_dict keeps timm's keys, so timm checkpoints still load.
        self.unused_parameter_names: tuple[str, ...] = tuple(unused)
        for name, parameter in self.model.named_parameters():
            if name in unused:
                parameter.requires_grad_(False)
        self.feature_dim = layout.channels
        self.projector = nn.Linear(layout.channels, out_width)
        # A convnet's cell knows where it lies only implicitly (through the padding its
        # receptive field reaches), and the decoder's 1-D rotary positions over the flattened
        # grid do not say which row and column: a learned embedding per cell, started at 2-D
        # sines and cosines, says so explicitly (N, out_width).
        self.position_embedding: nn.Parameter | None = None
        if position_embedding:
            grid = self.token_grid()
            if grid is None:
                raise ValueError(
                    f"position_embedding needs tokens on a known grid; {model_name!r} returns a "
                    f"token sequence of unknown layout"
                )
            self.position_embedding = nn.Parameter(sincos_position_embedding(*grid, out_width))
        # (weights key, BatchNorm-folded copy of `model`); a plain attribute, not a submodule,
        # so it is neither saved nor trained. None until the first call that can use it.
        self._folded: tuple[tuple, nn.Module | None] | None = None
        self.train(self.training)

    # ------------------------------------------------------------------ shapes
    def layout(self, image_size: ImageSize | None = None) -> FeatureLayout:
        """The feature layout for an image size (default: the configured one), probed once."""
        size = _pair(self.image_size if image_size is None else image_size)
        if size not in self._layouts:
            self._layouts[size], _ = _probe(self.model, size, self.feature_stage, find_unused=False)
        return self._layouts[size]

    def num_tokens(self, image_size: ImageSize | None = None) -> int:
        """N, the tokens per image `forward` returns, without running a real forward."""
        grid = self.token_grid(image_size)
        if grid is not None:
            return grid[0] * grid[1]
        layout = self.layout(image_size)
        return layout.length if self.max_tokens is None else min(layout.length, self.max_tokens)

    def token_grid(self, image_size: ImageSize | None = None) -> tuple[int, int] | None:
        """The (h, w) cells the tokens come from, after pooling to max_tokens; None when the
        model returns a sequence without a known grid."""
        layout = self.layout(image_size)
        if layout.grid is None:
            return None
        if self.max_tokens is None:
            return layout.grid
        return pooled_grid(*layout.grid, self.max_tokens)

    # ------------------------------------------------------------------ forward
    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 3, H, W) as the model was trained: ((x+1)/2 - mean) / std."""
        return pixels * self.input_scale + self.input_shift

    def train(self, mode: bool = True) -> TimmVisionTower:
        super().train(mode)
        if self.keeps_norm_statistics:
            self.model.eval()  # BatchNorm uses (and keeps) the pretrained statistics
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [-1, 1] -> (B, N, out_width) image tokens."""
        return self.project(self.encode(pixels))

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [-1, 1] -> (B, N, feature_dim): the encoder's tokens, before the
        projector (what a frozen encoder's per-frame feature cache holds)."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected pixels of shape (B, 3, H, W), got {tuple(pixels.shape)}")
        model = self.encoding_model()
        normalized = self.normalize(pixels)
        if model is not self.model:  # the folded copy is laid out channels-last
            normalized = normalized.contiguous(memory_format=torch.channels_last)
        features = run_features(model, normalized, self.feature_stage)
        return self.tokens(features, (pixels.shape[-2], pixels.shape[-1]))  # (B, N, C)

    def encoding_model(self) -> nn.Module:
        """The timm model `encode` runs now: its BatchNorm-folded, channels-last copy when
        BatchNorm uses running statistics and nothing needs a gradient through the encoder, else
        the model itself."""
        needs_gradient = torch.is_grad_enabled() and any(
            p.requires_grad for p in self.model.parameters()
        )
        if self.model.training or needs_gradient:
            return self.model
        tensors = [*self.model.parameters(), *self.model.buffers()]
        # in-place updates (load_state_dict, an optimizer) bump _version; moves change data_ptr
        key = tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)
        if self._folded is None or self._folded[0] != key:
            self._folded = (key, _checked_fold(self.model, self.image_size, self.feature_stage))
        return self._folded[1] or self.model

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, feature_dim) encoder tokens -> (B, N, out_width) decoder tokens."""
        projected = self.projector(tokens)  # (B, N, out_width)
        if self.position_embedding is None:
            return projected
        if projected.shape[1] != self.position_embedding.shape[0]:
            raise ValueError(
                f"{projected.shape[1]} image tokens, but the position embedding has "
                f"{self.position_embedding.shape[0]} (the {self.token_grid()} grid of "
                f"{self.image_size}-pixel images): feed images at the model's image_size"
            )
        return projected + self.position_embedding.to(projected.dtype)

    def tokens(self, features: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        """`run_features` output -> (B, N, C) tokens: prefix dropped, pooled to max_tokens."""
        features, grid = _split_features(self.model, features, image_hw, self.feature_stage)
        if grid is not None:
            return _grid_tokens(features, self.max_tokens)  # features (B, C, h, w)
        return _sequence_tokens(features, self.max_tokens)  # features (B, T, C)


# ---------------------------------------------------------------------- BatchNorm folding
def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """An eval-mode copy of `model` with each BatchNorm folded into the convolution registered
    just before it (a sibling, or the last layer of a sibling `nn.Sequential`: timm's conv/bn
    attribute pairs and ResNet's deep stem), and the number folded.

    A folded BatchNorm keeps what it does after normalizing (timm's `BatchNormAct2d` applies its
    dropout and activation) and is otherwise the identity. Registration order is taken as
    forward order, which holds for timm's convnets; `_checked_fold` verifies the result.
    """
    folded = copy.deepcopy(model).eval()
    count = 0
    for module in list(folded.modules()):
        names = list(module._modules)
        for before, norm_name in itertools.pairwise(names):
            norm = module._modules[norm_name]
            if not isinstance(norm, nn.BatchNorm2d) or not norm.track_running_stats:
                continue
            owner, conv_name = module, before
            while (
                isinstance(owner._modules[conv_name], nn.Sequential) and owner._modules[conv_name]
            ):
                owner = owner._modules[conv_name]
                conv_name = list(owner._modules)[-1]
            conv = owner._modules[conv_name]
            if not isinstance(conv, nn.Conv2d) or conv.out_channels != norm.num_features:
                continue
            owner._modules[conv_name] = fuse_conv_bn_eval(conv, norm)  # keeps conv's class
            module._modules[norm_name] = _AfterNorm(norm)
            count += 1
    return folded, count


class _AfterNorm(nn.Module):
    """What a folded BatchNorm still does: timm's `BatchNormAct2d` drop + act, else nothing."""

    def __init__(self, norm: nn.BatchNorm2d) -> None:
        super().__init__()
        self.drop = getattr(norm, "drop", nn.Identity())
        self.act = getattr(norm, "act", nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def _checked_fold(
    model: nn.Module, image_size: ImageSize, stage: int | None = None
) -> nn.Module | None:
    """`fold_batchnorm(model)`, laid out channels-last, if it folded anything and gives the
    model's features on a probe image (relative difference < 1e-4 in float32, 3e-2 in 16-bit
    types), else None: the model then runs unfolded."""
    folded, count = fold_batchnorm(model)
    if count == 0:
        return None
    folded = folded.to(memory_format=torch.channels_last)
    reference = next(iter(model.parameters()))
    probe = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, *_pair(image_size), generator=probe).to(reference)  # (2, 3, H, W)
    with torch.no_grad():
        expected = run_features(model, pixels, stage).float()
        channels_last = pixels.contiguous(memory_format=torch.channels_last)
        got = run_features(folded, channels_last, stage).float()
    scale = expected.norm().clamp_min(1e-12)
    tolerance = 1e-4 if reference.dtype in (torch.float32, torch.float64) else 3e-2
    return folded if float((got - expected).norm() / scale) < tolerance else None


# ---------------------------------------------------------------------- building the model
def _create_timm_model(model_name: str, model_kwargs: dict[str, Any]) -> nn.Module:
    """The headless timm model; never pretrained here, since timm's pretrained=True downloads."""
    if not timm.is_model(model_name):
        close = difflib.get_close_matches(model_name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise KeyError(f"timm has no model {model_name!r}{hint}; see timm.list_models()")
    for reserved in ("pretrained", "num_classes", "global_pool", "features_only"):
        if reserved in model_kwargs:
            raise ValueError(
                f"{reserved!r} is set by TimmVisionTower; remove it from the model kwargs"
            )
    return timm.create_model(
        model_name, pretrained=False, num_classes=0, global_pool="", **model_kwargs
    )


def _input_affine(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and shift taking [-1, 1] pixels to the model's (x01 - mean) / std."""
    data_config = timm.data.resolve_model_data_config(model)
    mean = torch.tensor(data_config["mean"], dtype=torch.float32).view(1, -1, 1, 1)  # (1, 3, 1, 1)
    std = torch.tensor(data_config["std"], dtype=torch.float32).view(1, -1, 1, 1)
    if mean.shape[1] != 3:
        raise ValueError(f"the model expects {mean.shape[1]} input channels; cameras give 3")
    # x01 = (x + 1) / 2  =>  (x01 - mean) / std = x * 0.5 / std + (0.5 - mean) / std
    return 0.5 / std, (0.5 - mean) / std


def load_timm_weights(model: nn.Module, path: str | Path, model_name: str = "") -> None:
    """Load a local file (safetensors or a timm/torch checkpoint) into `model`, strictly.

    Checked before loading so the error names the file and every kind of difference at once
    (torch's own strict load stops at the first size mismatch and does not name the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such weights file; weights are never downloaded: save them locally with "
            f"safetensors.torch.save_file(model.state_dict(), path)"
        )
    try:
        # timm's reader handles .safetensors, {'state_dict'|'model'|'state_dict_ema': ...}
        # checkpoints and DataParallel 'module.' prefixes; torch.load runs with weights_only.
        state = timm.models.load_state_dict(str(path), use_ema=True, device="cpu")
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{path}: could not read weights from this file ({error})") from error
    problems = _state_dict_differences(model.state_dict(), state)
    if problems:
        raise ValueError(
            f"{path}: weights do not fit timm model {model_name or type(model).__name__!r} "
            f"(built with the same name and kwargs?): {problems}"
        )
    model.load_state_dict(state, strict=True)


def _state_dict_differences(expected: dict[str, torch.Tensor], found: dict[str, Any]) -> str:
    """'' when keys and shapes agree, else a readable list of missing/unexpected/mismatched keys."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    mismatched = [
        f"{key} {tuple(found[key].shape)} vs {tuple(expected[key].shape)}"
        for key in expected
        if key in found and tuple(found[key].shape) != tuple(expected[key].shape)
    ]
    parts = []
    for label, keys in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches (file vs model)", mismatched),
    ):
        if keys:
            # sorted, with BatchNorm counters last: the first names shown are the telling ones
            keys = sorted(keys, key=lambda key: ("num_batches_tracked" in key, key))
            shown = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
            parts.append(f"{len(keys)} {label}: {shown}")
    return "; ".join(parts)


# ---------------------------------------------------------------------- which map
def run_features(model: nn.Module, pixels: torch.Tensor, stage: int | None) -> torch.Tensor:
    """The map the tokens come from: `forward_features` (stage None: the last map, final norm
    or head conv included), or the NCHW map of `feature_info[stage]`, computing no further."""
    if stage is None:
        return model.forward_features(pixels)
    maps = model.forward_intermediates(
        pixels, indices=[stage], intermediates_only=True, stop_early=True
    )
    return maps[0]  # (B, C, h, w)


def _checked_stage(model: nn.Module, model_name: str, stage: int | None) -> int | None:
    if stage is None:
        return None
    stages = getattr(model, "feature_info", None)
    if not hasattr(model, "forward_intermediates") or not stages:
        raise ValueError(
            f"feature_stage={stage}: timm model {model_name!r} has no forward_intermediates / "
            f"feature_info; use feature_stage=None (the last map)"
        )
    if isinstance(stage, bool) or not 0 <= stage < len(stages):
        described = ", ".join(
            f"{index}: stride {info['reduction']}, {info['num_chs']} channels"
            for index, info in enumerate(stages)
        )
        raise ValueError(
            f"feature_stage={stage!r} is not a stage of {model_name!r}; it has {described}"
        )
    return stage


# ---------------------------------------------------------------------- shapes without compute
def _probe(
    model: nn.Module, image_hw: tuple[int, int], stage: int | None, *, find_unused: bool
) -> tuple[FeatureLayout, list[str]]:
    """Layout of `run_features` at one image size, and the names of parameters it never uses.

    Runs under FakeTensorMode (shapes only; cheap even for large models); if an op is not
    supported there, runs for real on zeros. Eval mode, so BatchNorm statistics stay untouched.
    """
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode(allow_non_fake_inputs=True):
            return _run_probe(model, image_hw, stage, find_unused)
    except Exception:  # noqa: BLE001 - fall back to a real forward, which reports real errors
        pass
    try:
        return _run_probe(model, image_hw, stage, find_unused)
    except Exception as error:
        raise ValueError(
            f"the timm model rejected a {image_hw[0]}x{image_hw[1]} image ({error}); for a ViT, "
            f"pass img_size={image_hw[0]} or dynamic_img_size=True as a model kwarg"
        ) from error


def _run_probe(
    model: nn.Module, image_hw: tuple[int, int], stage: int | None, find_unused: bool
) -> tuple[FeatureLayout, list[str]]:
    reference = next(iter(model.parameters()), None)
    dtype = reference.dtype if reference is not None else torch.float32
    device = reference.device if reference is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.set_grad_enabled(find_unused):
            pixels = torch.zeros(1, 3, *image_hw, dtype=dtype, device=device)  # (1, 3, H, W)
            features = run_features(model, pixels, stage)
            unused = _unused_parameters(model, features) if find_unused else []
        features, grid = _split_features(model, features, image_hw, stage)
    finally:
        model.train(was_training)
    if grid is not None:
        channels, length = features.shape[1], grid[0] * grid[1]  # features (1, C, h, w)
    else:
        length, channels = features.shape[1], features.shape[2]  # features (1, T, C)
    return FeatureLayout(int(channels), int(length), grid), unused


def _unused_parameters(model: nn.Module, features: torch.Tensor) -> list[str]:
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named or not features.requires_grad:
        return []
    grads = torch.autograd.grad(features.float().sum(), [p for _, p in named], allow_unused=True)
    return [name for (name, _), grad in zip(named, grads, strict=True) if grad is None]


# ---------------------------------------------------------------------- features -> tokens
def _split_features(
    model: nn.Module, features: torch.Tensor, image_hw: tuple[int, int], stage: int | None
) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """-> ((B, C, h, w), (h, w)) for a known grid, else ((B, T, C) patch tokens, None)."""
    if features.ndim == 4:
        # a stage map is NCHW whatever the model's own format (forward_intermediates' default)
        if stage is None and getattr(model, "output_fmt", "NCHW") == "NHWC":
            features = features.permute(0, 3, 1, 2)  # (B, h, w, C) -> (B, C, h, w)
        return features, (features.shape[2], features.shape[3])
    if features.ndim != 3:
        raise ValueError(
            f"forward_features returned shape {tuple(features.shape)}; expected a (B, C, h, w) "
            f"map or a (B, T, C) token sequence"
        )
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    features = features[:, prefix:]  # (B, T, C) patch tokens only
    grid = _sequence_grid(model, features.shape[1], image_hw)
    if grid is None:
        return features, None
    batch, _, channels = features.shape
    return features.transpose(1, 2).reshape(batch, channels, *grid), grid  # (B, C, h, w)


def _sequence_grid(
    model: nn.Module, length: int, image_hw: tuple[int, int]
) -> tuple[int, int] | None:
    """The (h, w) patch grid of a token sequence, when it can be known; else None."""
    patch_embed = getattr(model, "patch_embed", None)
    candidates: list[tuple[int, int]] = []
    if hasattr(patch_embed, "dynamic_feat_size"):
        candidates.append(tuple(patch_embed.dynamic_feat_size(image_hw)))
    if getattr(patch_embed, "grid_size", None) is not None:
        candidates.append(tuple(patch_embed.grid_size))
    side = math.isqrt(length)
    candidates.append((side, side))
    for height, width in candidates:
        if height * width == length:
            return int(height), int(width)
    return None


def _grid_tokens(features: torch.Tensor, max_tokens: int | None) -> torch.Tensor:
    """(B, C, h, w) -> (B, N, C), average-pooled to at most max_tokens cells."""
    height, width = features.shape[-2:]
    if max_tokens is not None and height * width > max_tokens:
        features = F.adaptive_avg_pool2d(features, pooled_grid(height, width, max_tokens))
    return features.flatten(2).transpose(1, 2)  # (B, h'*w', C)


def _sequence_tokens(features: torch.Tensor, max_tokens: int | None) -> torch.Tensor:
    """(B, T, C) with no known grid -> (B, N, C), average-pooled along T to max_tokens."""
    if max_tokens is None or features.shape[1] <= max_tokens:
        return features
    pooled = F.adaptive_avg_pool1d(features.transpose(1, 2), max_tokens)  # (B, C, max_tokens)
    return pooled.transpose(1, 2)


def pooled_grid(height: int, width: int, max_tokens: int) -> tuple[int, int]:
    """The largest grid with about the aspect ratio of (height, width) and <= max_tokens cells."""
    if height * width <= max_tokens:
        return height, width
    # floor(sqrt(a / b)) == isqrt(a // b): integer math, so 3x3 is never lost to 2.9999...
    pooled_h = min(height, max(1, math.isqrt(max_tokens * height // width)))
    pooled_w = min(width, max(1, math.isqrt(max_tokens * width // height)))
    return pooled_h, min(pooled_w, max_tokens // pooled_h)


def sincos_position_embedding(height: int, width: int, dim: int) -> torch.Tensor:
    """(height * width, dim) fixed 2-D sine-cosine embedding of a row-major grid: the first half
    of the channels encodes the row, the second the column, each at geometric frequencies (as
    MAE's ViTs start theirs). dim must be a multiple of 4."""
    if dim % 4:
        raise ValueError(f"a 2-D sine-cosine embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, columns = torch.meshgrid(
        torch.arange(height, dtype=torch.float64),
        torch.arange(width, dtype=torch.float64),
        indexing="ij",
    )
    parts = []
    for coordinate in (rows.reshape(-1), columns.reshape(-1)):
        angles = coordinate[:, None] * frequencies[None, :]  # (h*w, dim/4)
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()  # (h*w, dim)


def _pair(size: ImageSize) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
