"""The policy API: transforms in and out, the stateless `infer` call, and `select_action` (infer
plus the shared chunker: receding horizon and temporal ensembling through the policy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TASKS, dataset_stats, observation

from vla.config import VLAConfig
from vla.model import VLAModel
from vla.policy import ReasoningUnavailableError, VLAPolicy
from vla.processor import Processor, ProcessorConfig
from vla.robot.chunker import ActionChunker, ChunkerConfig
from vla.tokenizer import train_tokenizer


class RecordingPolicy(VLAPolicy):
    """Counts model calls and keeps the chunks it returned."""

    def infer(self, observations, **options):
        out = super().infer(observations, **options)
        self.calls = getattr(self, "calls", []) + [out["actions"]]
        return out


@pytest.fixture(scope="module")
def parts() -> tuple[VLAModel, Processor]:
    torch.manual_seed(0)
    config = VLAConfig.named("tiny", action_horizon=6)
    tokenizer = train_tokenizer(TASKS, vocab_size=512)
    return VLAModel(config).eval(), Processor(
        config, ProcessorConfig(action_norm="quantile"), dataset_stats(), tokenizer
    )


def save_policy(  # noqa: ANN001
    parts, directory, processor_config: ProcessorConfig, reasoning_trained: bool | None = None
) -> None:
    """Export the fixture's model with the given processor settings as a checkpoint directory."""
    from vla.checkpoint import save_checkpoint

    model, processor = parts
    processor.tokenizer.save_pretrained(directory.parent / f"{directory.name}-tokenizer")
    save_checkpoint(
        directory,
        model,
        model.config,
        dataset_stats(),
        processor=processor_config.to_dict(),
        tokenizer_dir=directory.parent / f"{directory.name}-tokenizer",
        reasoning_trained=reasoning_trained,
    )


def test_processor_normalizes_inputs_and_inverts_action_normalization(parts) -> None:
    model, processor = parts
    obs = observation(0)
    inputs = processor.inputs([obs])
    image = inputs.images["agentview"]
    assert image.shape == (1, 3, 64, 64) and image.min() >= -1 and image.max() <= 1
    stats = dataset_stats()["observation.state"]
    expected_state = (obs["observation.state"] - stats["mean"]) / stats["std"]
    np.testing.assert_allclose(inputs.state[0].numpy(), expected_state, rtol=1e-5, atol=1e-6)
    assert (
        inputs.text_mask.sum() < model.config.max_text_tokens
        and inputs.text_ids[0, 0] == processor.tokenizer.bos_token_id
    )
    actions = torch.randn(2, 6, 7, dtype=torch.float64)
    np.testing.assert_allclose(
        processor.normalize_actions(torch.from_numpy(processor.actions(actions)).double()),
        actions,
        atol=1e-5,
    )
    q01, q99 = dataset_stats()["action"]["q01"], dataset_stats()["action"]["q99"]
    np.testing.assert_allclose(processor.actions(-torch.ones(1, 1, 7))[0, 0], q01, rtol=1e-5)
    np.testing.assert_allclose(processor.actions(torch.ones(1, 1, 7))[0, 0], q99, rtol=1e-5)


def test_key_map_and_missing_keys(parts) -> None:
    model, processor = parts
    mapped = Processor(
        model.config,
        ProcessorConfig(key_map={"observation/image": "observation.images.agentview"}),
        dataset_stats(),
        processor.tokenizer,
    )
    obs = observation(1)
    robot_obs = {
        ("observation/image" if key == "observation.images.agentview" else key): value
        for key, value in obs.items()
    }
    torch.testing.assert_close(
        mapped.inputs([robot_obs]).images["agentview"], processor.inputs([obs]).images["agentview"]
    )
    with pytest.raises(KeyError, match="lacks \\['observation.images.agentview'\\]"):
        processor.inputs([robot_obs])
    with pytest.raises(ValueError, match="observation.state has 7 values"):
        processor.inputs([{**obs, "observation.state": np.zeros(7)}])


def test_batched_chunks_equal_one_at_a_time(parts) -> None:
    model, processor = parts
    policy = VLAPolicy(model, processor)
    noise = torch.randn(2, 6, 7, generator=torch.Generator().manual_seed(0))
    out = policy.infer([observation(2, TASKS[0]), observation(3, TASKS[1])], noise=noise)
    assert set(out) == {"actions", "reasoning", "timing"} and out["reasoning"] is None
    batch = out["actions"]
    assert batch.shape == (2, 6, 7) and batch.dtype == np.float32
    for index, obs in enumerate((observation(2, TASKS[0]), observation(3, TASKS[1]))):
        # one observation dict is a batch of one
        single = policy.infer(obs, noise=noise[index : index + 1])["actions"]
        np.testing.assert_allclose(single[0], batch[index], atol=1e-5)


def test_select_action_executes_n_action_steps_per_chunk(parts) -> None:
    model, processor = parts
    policy = RecordingPolicy(model, processor, n_action_steps=4)
    actions = [policy.select_action(observation(10 + step)) for step in range(9)]
    assert len(policy.calls) == 3, "9 steps at 4 per chunk need chunks at steps 0, 4 and 8"
    for step, action in enumerate(actions):
        np.testing.assert_array_equal(action, policy.calls[step // 4][0, step % 4])
    policy.reset()
    policy.select_action(observation(0))
    assert len(policy.calls) == 4, "reset() drops the queued actions"
    with pytest.raises(ValueError, match="n_action_steps must be in 1..6"):
        VLAPolicy(model, processor, n_action_steps=7)


def test_temporal_ensemble_through_select_action_is_the_chunkers(parts) -> None:
    """select_action predicts every step and hands the chunks to the shared chunker: its actions
    are exactly what an ActionChunker fed the same chunks gives (the weighting itself is
    tests/test_chunker.py's)."""
    model, processor = parts
    policy = RecordingPolicy(model, processor, temporal_ensemble=0.5)
    actions = [policy.select_action(observation(20 + step)) for step in range(3)]
    assert len(policy.calls) == 3
    reference = ActionChunker(ChunkerConfig(temporal_ensemble=0.5))
    for action, chunks in zip(actions, policy.calls, strict=True):
        reference.add(chunks[0])
        np.testing.assert_array_equal(action, reference.pop_action())


def test_from_pretrained_round_trip(parts, tmp_path) -> None:
    """A saved checkpoint loads as a policy that predicts exactly what the original predicted."""
    model, processor = parts
    save_policy(parts, tmp_path / "checkpoint", processor.settings)
    loaded = VLAPolicy.from_pretrained(tmp_path / "checkpoint", n_action_steps=3)
    original = VLAPolicy(model, processor)
    noise = torch.randn(2, 6, 7)
    batch = [observation(40, TASKS[0]), observation(41, TASKS[1])]
    np.testing.assert_array_equal(
        loaded.infer(batch, noise=noise)["actions"], original.infer(batch, noise=noise)["actions"]
    )
    assert loaded.chunking.n_action_steps == 3
    assert loaded.processor.settings == processor.settings


def test_noise_scale_zero_is_the_deterministic_flow_from_the_mean(parts) -> None:
    model, processor = parts
    observations = [observation(3), observation(4, task=TASKS[1])]
    policy = VLAPolicy(model, processor, noise_scale=0.0)
    first, second = policy.infer(observations), policy.infer(observations)
    np.testing.assert_array_equal(first["actions"], second["actions"])
    reference = VLAPolicy(model, processor).infer(
        observations, noise=torch.zeros(2, model.config.action_horizon, 7)
    )
    np.testing.assert_array_equal(first["actions"], reference["actions"])
    timings = first["timing"]
    assert set(timings) >= {"prefix_ms", "denoise_ms", "reasoning_ms", "total_ms"}
    assert timings["total_ms"] >= timings["prefix_ms"] + timings["denoise_ms"]
    with pytest.raises(ValueError, match="noise_scale"):
        VLAPolicy(model, processor, noise_scale=-1.0)


def test_feature_cached_chunks_stay_close_to_uncached_ones(parts) -> None:
    model, processor = parts
    observations = [observation(5)]
    noise = torch.randn(
        1, model.config.action_horizon, 7, generator=torch.Generator().manual_seed(0)
    )
    exact = VLAPolicy(model, processor).infer(observations, noise=noise)["actions"]
    cached_policy = VLAPolicy(model, processor, feature_cache_every=2)
    out = cached_policy.infer(observations, noise=noise)
    cached = out["actions"]
    assert out["timing"]["feature_reuse"] == pytest.approx(0.5)
    assert np.isfinite(cached).all() and not np.array_equal(cached, exact)
    scale = np.abs(exact).mean()
    assert np.abs(cached - exact).mean() < 0.5 * scale


def test_random_shift_translates_training_images_only(parts) -> None:
    model, processor = parts
    shifted = Processor(
        model.config, ProcessorConfig(image_shift=3), dataset_stats(), processor.tokenizer
    )
    images = torch.rand(16, 3, 64, 64) * 2 - 1
    out = shifted.random_shift(images, np.random.default_rng(0))
    assert out.shape == images.shape and not torch.equal(out, images)
    # Each output is a translated window of the edge-padded input: its interior matches the
    # input shifted by some (dy, dx) in [-3, 3]^2.
    for image, moved in zip(images, out, strict=True):
        matches = [
            (dy, dx)
            for dy in range(-3, 4)
            for dx in range(-3, 4)
            if torch.equal(moved[:, 3:-3, 3:-3], image[:, 3 + dy : 61 + dy, 3 + dx : 61 + dx])
        ]
        assert len(matches) == 1
    assert torch.equal(processor.random_shift(images, np.random.default_rng(0)), images)
    # Inference never shifts: the same observation gives the same model input.
    obs = observation(7)
    torch.testing.assert_close(
        shifted.inputs([obs]).images["agentview"], processor.inputs([obs]).images["agentview"]
    )


def test_thinking_on_an_act_only_checkpoint_is_refused_by_name(parts, tmp_path) -> None:
    """An act-only model (reasoning dropout 1.0) never saw a reasoning target: decoding would
    produce fluent garbage, so think mode and reasoning reuse are refused, naming the checkpoint."""
    save_policy(parts, tmp_path / "act-only", ProcessorConfig(reasoning_dropout=1.0))
    policy = VLAPolicy.from_pretrained(tmp_path / "act-only")
    assert policy.infer(observation(0))["actions"].shape == (1, 6, 7)  # acting still works
    pattern = f"checkpoint {tmp_path / 'act-only'} cannot think: it was trained act-only"
    with pytest.raises(ReasoningUnavailableError, match=pattern):
        policy.infer(observation(0), think=True)
    with pytest.raises(ReasoningUnavailableError, match="reasoning_dropout = 1.0"):
        policy.infer(observation(0), reasoning=["PLAN: a. SUBTASK: a."])
    with pytest.raises(ReasoningUnavailableError, match="cannot think"):
        VLAPolicy.from_pretrained(tmp_path / "act-only", think=True)


def test_a_checkpoint_trained_without_reasoning_labels_refuses_to_think(parts, tmp_path) -> None:
    """Reasoning dropout 0.5 on a dataset without labels still never showed a chain: the export
    records reasoning_trained = false, and that is what the policy goes by."""
    save_policy(parts, tmp_path / "no-labels", ProcessorConfig(), reasoning_trained=False)
    policy = VLAPolicy.from_pretrained(tmp_path / "no-labels")
    assert not policy.can_reason
    with pytest.raises(ReasoningUnavailableError, match="had no reasoning labels"):
        policy.infer(observation(0), think=True)
    save_policy(parts, tmp_path / "labelled", ProcessorConfig(), reasoning_trained=True)
    thinking = VLAPolicy.from_pretrained(tmp_path / "labelled")
    assert isinstance(thinking.infer(observation(0), think=True)["reasoning"][0], str)
