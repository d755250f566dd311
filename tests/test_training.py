"""Training: typed configs with overrides, a Lightning run whose loss falls, resume, export."""

from __future__ import annotations

import csv
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from data.schema import ObservationSpec
from vla.checkpoint import load_checkpoint
from vla.policy import VLAPolicy
from vla.processor import Processor
from vla.training.config import ConfigError, load_config
from vla.training.module import warmup_cosine
from vla.training.run import train

REPO = Path(__file__).resolve().parents[1]


def test_config_file_overrides_and_errors(tmp_path: Path) -> None:
    config = load_config(
        REPO / "configs" / "quickstart.yaml",
        ["optim.lr=1e-4", "model.overrides.action_horizon=8", "trainer.ema_decay=null"],
    )
    assert (
        config.optim.lr == 1e-4
        and config.model.overrides == {"action_horizon": 8}
        and config.trainer.ema_decay is None
    )
    assert config.data.path == "outputs/quickstart/dataset" and config.model.name == "tiny-effnet"
    with pytest.raises(ConfigError, match="did you mean 'optim.lr'"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="did you mean 'trainer'"):
        load_config(None, ["trainr.max_steps=3"])
    with pytest.raises(ConfigError, match="trainer.max_steps: expected int"):
        load_config(None, ["trainer.max_steps=1.5"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["max_steps"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  pth: x\n")
    with pytest.raises(ConfigError, match="did you mean 'data.path'"):
        load_config(bad)


def test_warmup_then_cosine() -> None:
    factors = [warmup_cosine(step, warmup=10, total=110, floor=0.1) for step in range(120)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[60] == pytest.approx(0.1 + 0.9 * 0.5)
    assert factors[110] == pytest.approx(0.1) and factors[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "logs" / "csv" / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def losses(rows: list[dict[str, str]], key: str = "train/loss") -> list[float]:
    return [float(row[key]) for row in rows if row.get(key)]


@pytest.mark.slow
def test_training_learns_resumes_and_exports(write_dataset, tmp_path: Path) -> None:
    root, _ = write_dataset(lengths=(30, 30, 30, 30))
    overrides = [
        f"data.path={root}",
        f"output_dir={tmp_path / 'runs'}",
        "data.batch_size=8",
        "data.num_workers=0",
        "trainer.log_every=2",
        "trainer.checkpoint_every=10",
        "optim.warmup_steps=5",
        "optim.lr=2e-3",
        "logging.wandb=offline",
        "trainer.ema_decay=0.9",
        "model.overrides.num_inference_steps=3",
    ]
    first = load_config(None, [*overrides, "trainer.max_steps=20"])
    train(first)
    run_dir = first.run_dir
    assert (run_dir / "checkpoints" / "last.ckpt").exists() and (
        run_dir / "checkpoints" / "step=20.ckpt"
    ).exists()
    assert list((run_dir / "logs" / "wandb").glob("offline-run-*")), "wandb logs offline by default"
    assert not list(run_dir.rglob("*.partial")), "checkpoints are written atomically"

    resumed = load_config(None, [*overrides, "trainer.max_steps=100"])
    export = train(resumed, resume=True)
    steps = [int(row["step"]) for row in read_metrics(run_dir) if row.get("train/loss")]
    assert steps == sorted(steps) and steps[-1] == 99, "the resumed run continues the step count"
    checkpoint = torch.load(
        run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert checkpoint["global_step"] == 100

    rows = read_metrics(run_dir)
    assert any(float(row.get("train/device/samples_per_sec") or 0) > 0 for row in rows), (
        "throughput is logged"
    )
    values = losses(rows)
    start, end = np.mean(values[:3]), np.mean(values[-3:])
    assert end < start / 1.5, (
        f"training loss went from {start:.3f} to {end:.3f}; expected a 1.5x drop"
    )

    assert (
        yaml.safe_load((run_dir / "resolved_config.yaml").read_text())["trainer"]["max_steps"]
        == 100
    )
    # The export records the resolution the dataset stores (32x32), not the model's 64.
    exported = json.loads((export / "config.json").read_text())["observation"]
    assert ObservationSpec.from_dict(exported) == ObservationSpec.uniform(
        ("agentview", "wrist"), (32, 32)
    )
    loaded = load_checkpoint(export)
    assert Processor.from_checkpoint(loaded).observation_spec == loaded.observation_spec
    assert loaded.reasoning_trained is True  # reasoning labels and dropout 0.5: it learned to think
    policy = VLAPolicy.from_pretrained(export)
    rng = np.random.default_rng(0)
    obs = {
        "observation.images.agentview": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "observation.images.wrist": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "observation.state": rng.normal(size=8).astype(np.float32),
        "task": "task 0",
    }
    out = policy.infer([obs])
    assert out["actions"].shape == (1, 10, 7) and np.isfinite(out["actions"]).all()
    out = policy.infer([obs], think=True)
    assert isinstance(out["reasoning"][0], str)


@pytest.mark.parametrize(
    "path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda path: path.stem
)
def test_every_shipped_config_loads_and_names_a_model(path: Path) -> None:
    from vla.config import VLAConfig

    config = load_config(path)
    model_config = VLAConfig.named(config.model.name, **config.model.overrides)
    assert model_config.action_horizon >= 1 and config.trainer.max_steps > 0


def test_lora_trains_adapters_only_and_merges_into_a_plain_model() -> None:
    from conftest import fake_inputs

    from vla.config import VLAConfig
    from vla.model import VLAModel
    from vla.training.lora import add_lora, merge_lora

    torch.manual_seed(0)
    model = VLAModel(VLAConfig.named("tiny")).train()
    plain_keys = set(model.state_dict())
    frozen_before = {name: p.detach().clone() for name, p in model.backbone.named_parameters()}
    trainable = add_lora(model.backbone, rank=4, alpha=8.0)
    assert 0 < trainable < sum(p.numel() for p in frozen_before.values()) / 10
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    inputs = fake_inputs(model.config)
    for _ in range(3):
        optimizer.zero_grad()
        model.compute_loss(inputs, torch.randn(3, 10, 7))["loss"].backward()
        optimizer.step()
    for name, parameter in model.backbone.named_parameters():
        if "lora_" not in name:
            base = name.replace("base_layer.", "")
            torch.testing.assert_close(parameter, frozen_before[base], atol=0, rtol=0, msg=name)
    model.eval()
    noise = torch.randn(3, 10, 7)
    with_adapters = model.sample_actions(inputs, noise=noise)
    assert merge_lora(model) == 4 * 7  # 4 layers x (q, k, v, o, gate, up, down)
    assert set(model.state_dict()) == plain_keys, "the merged model is a plain VLAModel"
    torch.testing.assert_close(
        model.sample_actions(inputs, noise=noise), with_adapters, atol=1e-5, rtol=1e-5
    )


# ====================================================================================== refusing to be wrong
# A few steps of the tiny model on a small dataset: enough for Lightning to write checkpoints.
QUICK = [
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.log_every=1",
    "trainer.checkpoint_every=1",
    "trainer.ema_decay=null",
    "optim.warmup_steps=1",
    "logging.wandb=disabled",
    "model.overrides.num_inference_steps=2",
]


def quick_config(root: Path, runs: Path, *overrides: str):  # noqa: ANN201 - a TrainConfig
    return load_config(None, [f"data.path={root}", f"output_dir={runs}", *QUICK, *overrides])


def test_nan_dataset_stats_are_refused_before_the_first_step(write_dataset, tmp_path: Path) -> None:
    from data.stats import StatsError

    root, _ = write_dataset(lengths=(12, 12))
    path = root / "meta" / "stats.json"
    stats = json.loads(path.read_text())
    stats["action"]["mean"][2] = float("nan")
    path.write_text(json.dumps(stats))
    config = quick_config(root, tmp_path / "runs", "trainer.max_steps=2")
    with pytest.raises(StatsError) as error:
        train(config)
    message = str(error.value)
    assert message.startswith(str(path)) and "stats['action']['mean']" in message, message
    assert "non-finite" in message and "vla-data stats" in message, message
    assert not (config.run_dir / "checkpoints").exists(), "no training step may have run"


def test_chains_longer_than_max_reasoning_tokens_are_refused_before_the_first_step(
    write_dataset, tmp_path: Path
) -> None:
    """Before, such a chain was cut to the limit without a word (LIBERO's 7-object scenes: 158
    tokens against 96): the model learnt chains that stop mid-box and never parse."""
    root, _ = write_dataset(lengths=(12, 12))
    config = quick_config(
        root,
        tmp_path / "runs",
        "trainer.max_steps=2",
        "processor.reasoning_dropout=0.5",
        "model.overrides.max_reasoning_tokens=20",
    )
    with pytest.raises(ValueError, match="max_reasoning_tokens 20") as error:
        train(config)
    message = str(error.value)
    assert message.startswith(str(root)) and "model.overrides.max_reasoning_tokens=" in message
    assert not (config.run_dir / "checkpoints").exists(), "no training step may have run"
    needed = int(message.split("max_reasoning_tokens=")[1].split(" ")[0])
    enough = quick_config(
        root,
        tmp_path / "runs2",
        "trainer.max_steps=2",
        "processor.reasoning_dropout=0.5",
        f"model.overrides.max_reasoning_tokens={needed}",
    )
    assert (train(enough) / "model.safetensors").exists()


def test_non_finite_loss_stops_training_at_that_step(write_dataset, tmp_path: Path) -> None:
    """A learning rate of 1e30 sends the weights to ~1e30 in one step; the next loss overflows.
    Training must stop at that step, and no checkpoint may be written after it."""
    from vla.training.module import NonFiniteTrainingError

    root, _ = write_dataset(lengths=(12, 12))
    config = quick_config(root, tmp_path / "runs", "trainer.max_steps=5", "optim.lr=1e30")
    with pytest.raises(NonFiniteTrainingError) as error:
        train(config)
    message = str(error.value)
    step = int(message.split("step ")[1].split(":")[0].split(" ")[0])
    assert 1 <= step < 5 and "training loss is" in message, message
    checkpoints = config.run_dir / "checkpoints"
    saved = sorted(int(p.stem.removeprefix("step=")) for p in checkpoints.glob("step=*.ckpt"))
    assert saved and max(saved) <= step, f"a checkpoint was written after step {step}: {saved}"
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] <= step
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values()), "last.ckpt holds NaN"
    assert not (config.run_dir / "export").exists()


def flip_byte_in_largest_tensor(path: Path) -> None:
    """Flip one byte inside the storage of the largest tensor of a torch zip checkpoint (not its
    pickle or zip headers), the damage torch.load does not notice."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        entry = max(
            (info for info in archive.infolist() if "/data/" in info.filename),
            key=lambda info: info.file_size,
        )
    data = bytearray(path.read_bytes())
    header = entry.header_offset
    name_length, extra_length = struct.unpack("<HH", data[header + 26 : header + 30])
    start = header + 30 + name_length + extra_length
    data[start + entry.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_byte_in_last_ckpt_is_refused_on_resume(write_dataset, tmp_path: Path) -> None:
    from vla.training.checkpoint_io import ResumeError, verify_training_checkpoint

    root, _ = write_dataset(lengths=(12, 12))
    train(quick_config(root, tmp_path / "runs", "trainer.max_steps=2"))
    config = quick_config(root, tmp_path / "runs", "trainer.max_steps=3")
    last = config.run_dir / "checkpoints" / "last.ckpt"
    recorded = last.parent / "last.ckpt.sha256"
    assert recorded.read_text() == f"{sha256(last)}  last.ckpt\n"
    # A kill between renaming last.ckpt and its digest into place leaves the new digest pending
    # (and the previous one recorded): that checkpoint is intact and must resume.
    pending = last.parent / ".last.ckpt.sha256.partial"
    recorded.rename(pending)
    recorded.write_text(f"{sha256(last.parent / 'step=1.ckpt')}  last.ckpt\n")
    verify_training_checkpoint(last)
    assert recorded.read_text().split()[0] == sha256(last) and not pending.exists()

    flip_byte_in_largest_tensor(last)
    with pytest.raises(ResumeError) as error:
        train(config, resume=True)
    message = str(error.value)
    assert message.startswith(str(last)) and "sha256" in message and "step=2.ckpt" in message
    assert "last.ckpt.sha256" in message, message


def test_resume_with_nothing_to_resume_is_an_error(write_dataset, tmp_path: Path) -> None:
    from vla.training.checkpoint_io import ResumeError

    root, _ = write_dataset(lengths=(12, 12))
    config = quick_config(root, tmp_path / "runs", "trainer.max_steps=2")
    last = config.run_dir / "checkpoints" / "last.ckpt"
    with pytest.raises(ResumeError, match=f"{last}: no checkpoint to resume from"):
        train(config, resume=True)
    assert not last.exists(), "it must not have started a new run instead"

    spec = importlib.util.spec_from_file_location("train_script", REPO / "train.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    overrides = [f"data.path={root}", f"output_dir={tmp_path / 'runs'}", *QUICK]
    assert script.main(["--resume", *overrides]) == 2


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_model_overrides_are_type_checked() -> None:
    from vla.training.run import model_config_for

    with pytest.raises(ConfigError, match="action_horizon: expected int, got True"):
        model_config_for(load_config(None, ["model.overrides.action_horizon=true"]))
    with pytest.raises(ConfigError, match="cameras: expected a list, got 'agentview'"):
        model_config_for(load_config(None, ["model.overrides.cameras=agentview"]))
    config = model_config_for(load_config(None, ["model.overrides.cameras=[agentview]"]))
    assert config.cameras == ("agentview",), "a YAML list becomes the tuple the config holds"


@pytest.mark.parametrize("variant", ["png", "video"])
def test_stats_of_datasets_lerobot_wrote_pass_the_check(variant: str) -> None:
    """The stats check refuses the wrong, not the real: LeRobot's own stats.json passes."""
    from data.reader import LeRobotDatasetReader
    from vla.config import VLAConfig
    from vla.processor import ProcessorConfig, check_policy_stats

    reader = LeRobotDatasetReader(REPO / "tests" / "fixtures" / "lerobot" / variant)
    checked = check_policy_stats(
        reader.stats, "stats.json", VLAConfig.named("tiny"), ProcessorConfig("quantile")
    )
    assert checked["action"]["q99"].shape == (7,) and len(checked) == len(reader.stats)
