"""A frozen pretrained encoder: features computed once per frame equal live encoding, training
with them leaves the encoder as pretrained, fine-tuning keeps its BatchNorm statistics, and the
exported checkpoint loads and acts without the weights package's cache."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import observation
from safetensors.torch import load_file

from data.reader import LeRobotDatasetReader
from data.schema import image_key
from data.torch_dataset import ActionChunkDataset, decoded_frame_cache
from vla.checkpoint import load_checkpoint
from vla.config import VLAConfig
from vla.model import VLAModel
from vla.policy import VLAPolicy
from vla.pretrained import CACHE_ENV, packaged_weights_path
from vla.processor import PrepareImages, Processor, ProcessorConfig, StepContext
from vla.training.config import load_config
from vla.training.frozen_features import FrozenImageFeatures
from vla.training.run import build_tokenizer, train, training_observation_spec

# EfficientNet-Lite0 at 64x64: a 2x2 map, 4 tokens per camera; small enough for CI.
SMALL_EFFNET = {"image_size": 64, "action_horizon": 8, "num_inference_steps": 3}


@pytest.mark.parametrize("video", [False, True], ids=["png", "video"])
def test_precomputed_features_give_the_loss_live_images_give(
    write_dataset, tmp_path: Path, video: bool
) -> None:
    root, _ = write_dataset(lengths=(12, 9), video=video)
    reader = LeRobotDatasetReader(root)
    config = VLAConfig.named("tiny-effnet", **SMALL_EFFNET)
    torch.manual_seed(0)
    model = VLAModel(config).eval()
    spec = training_observation_spec(config, reader)
    tokenizer = build_tokenizer(load_config(None, [f"data.path={root}"]), reader, tmp_path / "tok")
    processor = Processor(
        config, ProcessorConfig(reasoning_dropout=1.0), reader.stats, tokenizer, spec
    )
    tower = model.backbone.image_encoder
    features = FrozenImageFeatures.for_dataset(
        tower, reader, spec, config.image_size, progress=False
    )
    assert features.tables["agentview"].shape == (reader.num_frames, 4, tower.feature_dim)
    # frames are encoded straight from the dataset: no decoded-frame cache is left on disk
    assert not list((root / ".cache").glob("*.npy"))
    # batches of consecutive rows, across episode boundaries (episodes of 12 and 9 frames), give
    # what one batch over every decoded frame gives: bit for bit with the same batch (64 rows
    # hold all 21), to float16 rounding with batches of 5 (oneDNN may pick other kernels)
    small = FrozenImageFeatures.for_dataset(
        tower, reader, spec, config.image_size, batch_size=5, progress=False
    )
    key = image_key("wrist")
    frames = torch.from_numpy(np.load(decoded_frame_cache(reader, key)))  # (F, H, W, 3)
    prepare = PrepareImages(dataclasses.replace(spec, cameras=(spec.camera("wrist"),)), 64)
    with torch.inference_mode():
        pixels = prepare({key: frames}, StepContext(training=False))[key]
        expected_wrist = tower.encode(pixels).half()
    torch.testing.assert_close(small.tables["wrist"], expected_wrist, rtol=0, atol=1e-3)
    assert torch.equal(features.tables["wrist"], expected_wrist)  # the same single batch

    dataset = ActionChunkDataset(reader, action_horizon=8)
    batch = torch.utils.data.default_collate([dataset[i] for i in (0, 5, 13, 20)])
    rng = np.random.default_rng(0)
    live, actions, pad = processor.training_inputs(batch, np.random.default_rng(0))
    cached, _, _ = processor.training_inputs(features.attach(batch), rng)
    assert cached.images == {} and set(cached.image_features) == {"agentview", "wrist"}
    noise, time = torch.randn_like(actions), torch.full((4,), 0.4)
    with torch.no_grad():
        expected = model.compute_loss(live, actions, pad, noise=noise, time=time)["loss"]
        got = model.compute_loss(cached, actions, pad, noise=noise, time=time)["loss"]
    # float16 storage of the features is the only difference
    assert torch.allclose(got, expected, rtol=2e-3), (got, expected)

    # the cache is reused, and another encoder never reads it
    cache_files = sorted((root / ".cache").glob("features-*"))
    stamps = [path.stat().st_mtime_ns for path in cache_files]
    FrozenImageFeatures.for_dataset(tower, reader, spec, config.image_size, progress=False)
    assert [path.stat().st_mtime_ns for path in cache_files] == stamps
    with torch.no_grad():
        next(tower.model.parameters()).add_(0.01)
    FrozenImageFeatures.for_dataset(tower, reader, spec, config.image_size, progress=False)
    assert len(sorted((root / ".cache").glob("features-*"))) == 2 * len(cache_files)


def encoder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefix = "backbone.timm_tower.model."
    return {
        key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)
    }


@pytest.mark.slow
@pytest.mark.parametrize("vision_lr_scale", [0.0, 0.1], ids=["frozen", "fine-tuned"])
def test_training_keeps_the_pretrained_encoder_as_configured(
    write_dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vision_lr_scale: float
) -> None:
    root, _ = write_dataset(lengths=(20, 20))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "weights"))
    pretrained = load_file(str(packaged_weights_path("efficientnet_lite0")))
    overrides = [f"model.overrides.{key}={value}" for key, value in SMALL_EFFNET.items()]
    config = load_config(
        None,
        [
            f"data.path={root}",
            f"output_dir={tmp_path / 'runs'}",
            "model.name=tiny-effnet",
            *overrides,
            f"optim.vision_lr_scale={vision_lr_scale}",
            "optim.lr=1e-2",  # large, so that a fine-tuned encoder visibly moves in 8 steps
            "optim.warmup_steps=1",
            "data.batch_size=4",
            "data.num_workers=0",
            "trainer.max_steps=8",
            "trainer.ema_decay=null",
            "logging.wandb=disabled",
        ],
    )
    export = train(config)
    trained = encoder_state(load_file(str(export / "model.safetensors")))
    statistics = [key for key in pretrained if "running_" in key]
    weights = [key for key in pretrained if "running_" not in key and "num_batches" not in key]
    assert statistics and all(torch.equal(trained[key], pretrained[key]) for key in statistics), (
        "BatchNorm keeps the ImageNet statistics whether the encoder is frozen or fine-tuned"
    )
    unchanged = all(torch.equal(trained[key], pretrained[key]) for key in weights)
    assert unchanged == (vision_lr_scale == 0)
    assert bool(sorted(root.joinpath(".cache").glob("features-*"))) == (vision_lr_scale == 0)

    model_config = json.loads((export / "config.json").read_text())["model"]
    assert model_config["vision_pretrained"] is None
    assert model_config["vision_tower_kwargs"] == {"keep_norm_statistics": True}
    # loading needs neither the package's file nor its cache: the checkpoint holds the weights
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "empty"))
    loaded = load_checkpoint(export)
    assert loaded.model.backbone.image_encoder.keeps_norm_statistics
    assert not (tmp_path / "empty").exists()
    policy = VLAPolicy.from_pretrained(export)
    actions = policy.infer([observation(size=32, task="task 0")])["actions"]
    assert actions.shape == (1, 8, 7) and np.isfinite(actions).all()
