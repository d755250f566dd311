"""TimmVisionTower: any timm model as the image encoder, with local-only pretrained weights.

Parametrized over a convnet with a plain head (resnet10t), a convnet whose head owns parameters
that `forward_features` never uses (MobileNetV3's conv_head), and a ViT with a class token.
Weights are random (pretrained=False): nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from vla.vision import TimmVisionTower, pooled_grid

IMAGE_SIZE = 64
OUT_WIDTH = 24

# (model name, create_model kwargs, tokens at 64x64, parameters forward_features never uses)
MODELS = [
    pytest.param("resnet10t", {}, 4, set(), id="resnet10t"),  # stride 32 -> 2x2 map
    pytest.param(
        "mobilenetv3_small_050", {}, 4, {"conv_head.weight", "conv_head.bias"}, id="mobilenetv3"
    ),
    pytest.param("vit_tiny_patch16_224", {"img_size": IMAGE_SIZE}, 16, set(), id="vit_tiny"),  # 4x4
]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """These models are tiny: one thread is fastest, and two oversubscribe a shared 2-core CI box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, kwargs: dict, seed: int = 0, **options) -> TimmVisionTower:
    torch.manual_seed(seed)
    return TimmVisionTower(name, IMAGE_SIZE, OUT_WIDTH, **options, **kwargs)


def images(batch: int = 2, size: int = IMAGE_SIZE, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=generator) * 2 - 1  # (B, 3, H, W) in [-1, 1]


@pytest.mark.parametrize("name, kwargs, tokens, unused", MODELS)
def test_tokens_are_projected_patch_features(
    name: str, kwargs: dict, tokens: int, unused: set
) -> None:
    tower = build(name, kwargs).eval()
    pixels = images()
    with torch.no_grad():
        out = tower(pixels)  # (B, N, OUT_WIDTH)
        # Independent of the tower's own helpers: normalize with the pretrained_cfg stats,
        # flatten the map (or drop the class token), project.
        mean = torch.tensor(tower.model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(tower.model.pretrained_cfg["std"]).view(1, 3, 1, 1)
        torch.testing.assert_close(tower.normalize(pixels), ((pixels + 1) / 2 - mean) / std)
        features = tower.model.forward_features(((pixels + 1) / 2 - mean) / std)
        if features.ndim == 4:  # (B, C, h, w) -> (B, h*w, C)
            features = features.flatten(2).transpose(1, 2)
        else:  # (B, 1 + T, C) -> (B, T, C)
            features = features[:, tower.model.num_prefix_tokens :]
        expected = tower.projector(features)
    assert out.shape == (2, tokens, OUT_WIDTH)
    assert tower.num_tokens() == tokens == tower.num_tokens(IMAGE_SIZE)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected)
    # different images give different tokens: the pixels, not only biases, reach the output
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("name, kwargs, tokens, unused", MODELS)
def test_every_trainable_parameter_gets_a_gradient(
    name: str, kwargs: dict, tokens: int, unused: set
) -> None:
    tower = build(name, kwargs).train()
    assert all(p.grad is None for p in tower.parameters())  # the shape probe left no gradients
    tower(images()).mean().backward()
    # parameters only the classifier head uses are frozen (they would break DDP), nothing else
    assert set(tower.unused_parameter_names) == unused
    frozen = {n for n, p in tower.model.named_parameters() if not p.requires_grad}
    assert frozen == unused
    trainable = [(n, p) for n, p in tower.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    assert tower.projector.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tower.parameters() if not p.requires_grad)


@pytest.mark.parametrize("name, kwargs, tokens, unused", MODELS)
def test_max_tokens_average_pools_the_grid(
    name: str, kwargs: dict, tokens: int, unused: set
) -> None:
    pooled = build(name, kwargs).eval()
    pixels = images()
    with torch.no_grad():
        reference = pooled(pixels)  # (B, tokens, D)
        pooled.max_tokens = 1  # a plain attribute: pooling has no weights
        one = pooled(pixels)  # (B, 1, D)
        assert one.shape == (2, 1, OUT_WIDTH) and pooled.num_tokens() == 1
        # pooling and the linear projector commute: one token = the mean of all tokens
        torch.testing.assert_close(one, reference.mean(dim=1, keepdim=True), atol=1e-5, rtol=1e-5)
        for cap in (3, 5, tokens, tokens + 7):
            pooled.max_tokens = cap
            out = pooled(pixels)
            assert out.shape[1] == pooled.num_tokens() <= cap
        torch.testing.assert_close(out, reference, atol=0, rtol=0)  # cap above N: untouched


def test_max_tokens_pools_neighbouring_patches() -> None:
    """A 4x4 ViT grid capped at 5 tokens becomes 2x2 blocks in row-major order."""
    tower = build("vit_tiny_patch16_224", {"img_size": IMAGE_SIZE}, max_tokens=5).eval()
    with torch.no_grad():
        out = tower(images())  # (B, 4, D)
        assert tower.num_tokens() == 4
        tower.max_tokens = None
        grid = tower(images()).view(2, 4, 4, OUT_WIDTH)  # (B, h, w, D)
    assert out.shape == (2, 4, OUT_WIDTH)
    top_right = grid[:, 0:2, 2:4].mean(dim=(1, 2))
    torch.testing.assert_close(out[:, 1], top_right, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "height, width, max_tokens, expected",
    [
        (4, 4, 16, (4, 4)),
        (4, 4, 5, (2, 2)),
        (4, 4, 9, (3, 3)),
        (2, 8, 4, (1, 4)),
        (1, 100, 10, (1, 10)),
        (7, 7, 1, (1, 1)),
    ],
)
def test_pooled_grid_keeps_aspect_and_cap(
    height: int, width: int, max_tokens: int, expected: tuple[int, int]
) -> None:
    assert pooled_grid(height, width, max_tokens) == expected


def test_num_tokens_at_another_image_size_matches_forward() -> None:
    tower = build("resnet10t", {}).eval()
    with torch.no_grad():
        out = tower(images(batch=1, size=96))
    assert tower.num_tokens(96) == out.shape[1] == 9  # 96 / 32 = 3x3


@pytest.mark.parametrize("name, kwargs, tokens, unused", MODELS)
def test_pretrained_path_loads_bit_identical(
    tmp_path: Path, name: str, kwargs: dict, tokens: int, unused: set
) -> None:
    source = build(name, kwargs, seed=0).eval()
    path = tmp_path / "weights.safetensors"
    save_file(source.model.state_dict(), str(path))
    loaded = build(name, kwargs, seed=1, pretrained_path=str(path)).eval()
    loaded.projector.load_state_dict(source.projector.state_dict())  # the file holds timm's part
    pixels = images()
    with torch.no_grad():  # seed 1 alone would give other weights: equality comes from the file
        assert torch.equal(loaded(pixels), source(pixels))


def test_timm_style_checkpoint_loads(tmp_path: Path) -> None:
    """A timm training checkpoint ({'state_dict': ...}, .pth) loads like a safetensors file."""
    source = build("resnet10t", {}, seed=0).eval()
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 3, "state_dict": source.model.state_dict()}, path)
    loaded = build("resnet10t", {}, seed=1, pretrained_path=path).eval()
    for key, value in source.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_other_models_weights_fail_naming_file_and_keys(tmp_path: Path) -> None:
    resnet_path = tmp_path / "resnet10t.safetensors"
    resnet = timm.create_model("resnet10t", num_classes=0, global_pool="")
    save_file(resnet.state_dict(), str(resnet_path))
    with pytest.raises(ValueError) as raised:
        build("mobilenetv3_small_050", {}, pretrained_path=resnet_path)
    message = str(raised.value)
    resnet_keys = set(resnet.state_dict())
    mobilenet_keys = set(timm.create_model("mobilenetv3_small_050", num_classes=0).state_dict())
    assert str(resnet_path) in message
    missing, unexpected = mobilenet_keys - resnet_keys, resnet_keys - mobilenet_keys
    assert f"{len(missing)} missing keys: blocks.0.0.bn1.bias" in message  # mobilenet's, sorted
    assert f"{len(unexpected)} unexpected keys: conv1.0.weight" in message  # resnet's, sorted

    # same keys, other widths: the shape mismatch is named with both shapes
    narrow_path = tmp_path / "mobilenet_050.safetensors"
    save_file(
        timm.create_model("mobilenetv3_small_050", num_classes=0).state_dict(), str(narrow_path)
    )
    first_shown = r"shape mismatches \(file vs model\): blocks\.0\.0\.bn2\.bias \(8,\) vs \(16,\)"
    with pytest.raises(ValueError, match=first_shown) as raised:
        build("mobilenetv3_small_100", {}, pretrained_path=narrow_path)
    assert str(narrow_path) in str(raised.value) and "missing keys" not in str(raised.value)


def test_missing_weights_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.safetensors"
    with pytest.raises(FileNotFoundError, match="absent.safetensors.*never downloaded"):
        build("resnet10t", {}, pretrained_path=path)


def test_pretrained_without_path_refuses_to_download() -> None:
    with pytest.raises(ValueError, match="never downloaded.*pretrained_path"):
        TimmVisionTower("resnet10t", IMAGE_SIZE, OUT_WIDTH, pretrained=True)


def test_unknown_model_name_suggests_close_names() -> None:
    with pytest.raises(KeyError, match="did you mean.*resnet10t"):
        TimmVisionTower("resnet10", IMAGE_SIZE, OUT_WIDTH)


def test_shapes_and_unused_parameters_without_fake_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where FakeTensorMode cannot run a model, a real forward on zeros gives the same answers."""
    import torch._subclasses.fake_tensor as fake_tensor

    def unavailable(*args: object, **kwargs: object) -> None:
        raise RuntimeError("fake tensors unsupported here")

    monkeypatch.setattr(fake_tensor, "FakeTensorMode", unavailable)
    tower = build("mobilenetv3_small_050", {}).train()
    assert tower.num_tokens() == 4 and tower.num_tokens(96) == 9
    assert set(tower.unused_parameter_names) == {"conv_head.weight", "conv_head.bias"}
    # the probe ran in eval mode and left no trace: mode, gradients, BatchNorm statistics
    assert tower.training and all(p.grad is None for p in tower.parameters())
    assert all(int(b) == 0 for n, b in tower.named_buffers() if n.endswith("num_batches_tracked"))


def test_image_size_the_vit_rejects_names_the_fix() -> None:
    with pytest.raises(ValueError, match="32x32 image.*dynamic_img_size=True"):
        TimmVisionTower("vit_tiny_patch16_224", 32, OUT_WIDTH, img_size=IMAGE_SIZE)


# convnets with BatchNorm: a plain ResNet, MobileNetV3 (BatchNormAct2d), and EfficientNet-Lite0
# as tiny-effnet builds it (TF "same" padding convolutions)
BATCHNORM_MODELS = [
    pytest.param("resnet10t", 64, id="resnet10t"),
    pytest.param("mobilenetv3_small_050", 64, id="mobilenetv3"),
    pytest.param("tf_efficientnet_lite0", 128, id="efficientnet_lite0"),
]


def with_random_statistics(tower: TimmVisionTower, seed: int) -> TimmVisionTower:
    """Running statistics far from timm's (0, 1) init, so a fold that ignored them would show."""
    generator = torch.Generator().manual_seed(seed)
    for module in tower.model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            shape = module.running_mean.shape
            module.running_mean.copy_(torch.rand(shape, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(shape, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(shape, generator=generator) - 0.5)
    return tower


@pytest.mark.parametrize("name, size", BATCHNORM_MODELS)
def test_inference_runs_the_batchnorm_folded_encoder(name: str, size: int) -> None:
    torch.manual_seed(0)
    tower = with_random_statistics(TimmVisionTower(name, size, OUT_WIDTH).eval(), seed=0)
    pixels = images(size=size)
    with torch.no_grad():
        folded = tower.encoding_model()
        assert folded is not tower.model
        # every BatchNorm is gone into its convolution, and nothing of it is saved or trained
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        assert not any(m is folded for m in tower.modules())
        assert tower.encoding_model() is folded  # made once while the weights stay the same
        expected = tower.model.forward_features(tower.normalize(pixels))
        got = folded.forward_features(tower.normalize(pixels))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())
        torch.testing.assert_close(tower.encode(pixels), tower.tokens(got, (size, size)))
    # a gradient through the encoder runs the model itself; a frozen one may fold under autograd
    assert tower.encoding_model() is tower.model
    tower.model.requires_grad_(False)
    assert tower.encoding_model() is folded
    tower.train()  # a tower without kept statistics trains its BatchNorm: never folded then
    with torch.no_grad():
        assert tower.encoding_model() is tower.model


def test_the_folded_encoder_follows_the_weights() -> None:
    """Loading other weights or changing dtype remakes the folded copy: never a stale encoder."""
    first = with_random_statistics(build("resnet10t", {}, seed=0).eval(), seed=0)
    second = with_random_statistics(build("resnet10t", {}, seed=1).eval(), seed=1)
    pixels = images()
    with torch.no_grad():
        before = first.encode(pixels)
        first.load_state_dict(second.state_dict())
        after = first.encode(pixels)
        torch.testing.assert_close(after, second.encode(pixels), rtol=0, atol=0)
        assert not torch.allclose(before, after)
        first.double()
        torch.testing.assert_close(
            first.encode(pixels.double()), after.double(), rtol=1e-4, atol=1e-4
        )


class _NormBeforeConv(torch.nn.Module):
    """A conv registered before a BatchNorm that runs *before* it: the fold's order assumption
    does not hold, and only the numerical check can tell."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


def test_a_fold_that_changes_the_features_is_not_used() -> None:
    from vla.vision import _checked_fold, fold_batchnorm

    torch.manual_seed(0)
    model = _NormBeforeConv().eval()
    model.norm.running_mean.fill_(0.7)
    model.norm.running_var.fill_(3.0)
    assert fold_batchnorm(model)[1] == 1  # folded by registration order, wrongly
    assert _checked_fold(model, 8) is None  # so the tower would run the model unfolded


def test_feature_stage_takes_the_finer_map_and_freezes_the_layers_after_it() -> None:
    """tiny-effnet-s16's tower: EfficientNet-Lite0's stride-16 stage, 8 x 8 x 112 at 128 px."""
    from vla.vision import run_features

    torch.manual_seed(0)
    tower = TimmVisionTower("tf_efficientnet_lite0", 128, OUT_WIDTH, feature_stage=3)
    tower = with_random_statistics(tower, seed=0).eval()
    assert tower.num_tokens() == 64 and tower.feature_dim == 112
    pixels = images(size=128)
    with torch.no_grad():
        stage_map = tower.model.forward_intermediates(
            tower.normalize(pixels), indices=[3], intermediates_only=True
        )[0]  # (B, 112, 8, 8), unfolded, without stopping early
        expected = stage_map.flatten(2).transpose(1, 2)  # (B, 64, 112)
        tokens = tower.encode(pixels)  # the folded copy, stopping at the stage
        torch.testing.assert_close(tokens, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())
        torch.testing.assert_close(
            run_features(tower.model, tower.normalize(pixels), 3), stage_map, rtol=0, atol=0
        )
    # everything after the stage is frozen as unused (DDP needs a gradient for each trainable)
    unused = set(tower.unused_parameter_names)
    assert {"conv_head.weight", "blocks.6.0.conv_pw.weight"} <= unused
    assert not any(name.startswith(("blocks.0.", "blocks.4.", "conv_stem")) for name in unused)
    tower.train()
    tower(pixels).mean().backward()
    trainable = [(n, p) for n, p in tower.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in trainable)


def test_a_feature_stage_the_model_lacks_names_the_stages() -> None:
    with pytest.raises(ValueError, match=r"feature_stage=7 .*3: stride 16, 112 channels"):
        TimmVisionTower("tf_efficientnet_lite0", 128, OUT_WIDTH, feature_stage=7)


# ---------------------------------------------------------------------- position embedding
def test_sincos_position_embedding_gives_every_cell_its_own_row_and_column_code() -> None:
    from vla.vision import sincos_position_embedding

    table = sincos_position_embedding(3, 4, 16)  # (12, 16), row-major cells
    assert table.shape == (12, 16) and table.dtype == torch.float32
    cells = table.reshape(3, 4, 16)
    # the first half of the channels depends on the row only, the second on the column only
    assert torch.equal(cells[:, :1, :8].expand(3, 4, 8), cells[..., :8])
    assert torch.equal(cells[:1, :, 8:].expand(3, 4, 8), cells[..., 8:])
    assert len({tuple(row.tolist()) for row in table}) == 12
    with pytest.raises(ValueError, match="divisible by 4, got 18"):
        sincos_position_embedding(2, 2, 18)


def test_position_embedding_is_added_per_cell_and_trains() -> None:
    """Each token gets its own cell's row of the embedding, the same for every image of a batch,
    and the embedding gets a gradient (it is trained with the projector, even when the encoder
    is frozen and its features come from a cache)."""
    torch.manual_seed(0)
    tower = TimmVisionTower(
        "tf_efficientnet_lite0", 128, 32, feature_stage=3, position_embedding=True
    )
    tower = with_random_statistics(tower, seed=0).eval()
    position = tower.position_embedding
    assert position is not None and position.shape == (64, 32)  # 8 x 8 cells at stride 16
    pixels = images(size=128)
    features = tower.encode(pixels).detach()  # (B, 64, 112), what a feature cache holds
    tokens = tower.project(features)  # (B, 64, 32)
    expected = tower.projector(features) + position[None]
    torch.testing.assert_close(tokens, expected, rtol=0, atol=0)
    tokens.square().sum().backward()
    assert position.grad is not None and position.grad.abs().min() > 0


def test_position_embedding_refuses_another_token_count() -> None:
    tower = TimmVisionTower("resnet10t", IMAGE_SIZE, OUT_WIDTH, position_embedding=True)
    assert tower.position_embedding is not None and tower.position_embedding.shape == (4, 24)
    with pytest.raises(ValueError, match=r"16 image tokens, but the position embedding has 4"):
        tower(images(size=128))  # 4 x 4 cells where the model was built for 2 x 2
