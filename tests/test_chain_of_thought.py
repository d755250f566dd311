"""Chain of thought: the expert reads generated or fed-back reasoning the same way, a model
overfitted on one example regenerates its reasoning, dropout makes acting without thinking a
trained mode, and the policy regenerates only every k chunks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import TASKS, dataset_stats, fake_inputs, observation

from data.reasoning import ObjectBox, Reasoning, format_reasoning
from vla.config import VLAConfig
from vla.model import ModelInputs, VLAModel
from vla.policy import VLAPolicy
from vla.processor import Processor, ProcessorConfig
from vla.tokenizer import train_tokenizer

REASONING = Reasoning(
    plan=("pick up the red cube", "place it on the plate"),
    subtask="pick up the red cube",
    move="move left down",
    gripper_px=((61, 40), (60, 44)),
    objects=(ObjectBox("red cube", (50, 40, 62, 52)),),
)


@pytest.fixture(scope="module")
def processor() -> Processor:
    config = VLAConfig.named(
        "tiny", max_reasoning_tokens=64, action_horizon=4, num_inference_steps=3
    )
    tokenizer = train_tokenizer([*TASKS, format_reasoning(REASONING)], vocab_size=512)
    return Processor(
        config, ProcessorConfig(reasoning_dropout=0.0, tag_dropout=0.0), dataset_stats(), tokenizer
    )


def test_generated_chain_and_fed_back_chain_give_the_same_actions(processor: Processor) -> None:
    torch.manual_seed(0)
    model = VLAModel(processor.config.replace(max_reasoning_tokens=12)).eval()
    inputs = fake_inputs(model.config, batch=2, text_lengths=(9, 20))
    cache, ids, mask = model.generate_reasoning(
        inputs, eos_token_id=processor.tokenizer.eos_token_id
    )
    assert ids.shape[0] == 2 and mask[:, 0].all()
    noise = torch.randn(2, model.config.action_horizon, 7)
    generated = model.sample_actions(inputs, noise=noise, cache=cache)
    forced = model.sample_actions(
        replace(inputs, reasoning_ids=ids, reasoning_mask=mask), noise=noise
    )
    uncached = model.sample_actions(
        replace(inputs, reasoning_ids=ids, reasoning_mask=mask), noise=noise, use_cache=False
    )
    torch.testing.assert_close(generated, forced, atol=1e-5, rtol=0)
    torch.testing.assert_close(forced, uncached, atol=1e-5, rtol=0)
    without = model.sample_actions(inputs, noise=noise)
    assert not torch.allclose(without, forced, atol=1e-4), (
        "the expert must read the reasoning tokens"
    )


def test_overfitted_model_regenerates_its_reasoning(processor: Processor) -> None:
    torch.manual_seed(0)
    model = VLAModel(processor.config).train()
    obs = observation(0, TASKS[0])
    inputs = processor.inputs([obs])
    target_text = format_reasoning(REASONING, include=["subtask", "move", "gripper"])
    ids, mask = processor.encode_reasoning([target_text])
    inputs = replace(inputs, reasoning_ids=ids, reasoning_mask=mask)
    actions = torch.zeros(1, model.config.action_horizon, 7)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(120):
        optimizer.zero_grad()
        losses = model.compute_loss(inputs, actions)
        losses["loss"].backward()
        optimizer.step()
    assert losses["reasoning_loss"].item() < 0.05
    model.eval()
    _, generated, generated_mask = model.generate_reasoning(
        inputs.without_reasoning(), processor.tokenizer.eos_token_id
    )
    assert processor.decode_reasoning(generated, generated_mask) == [target_text]


def test_reasoning_loss_reaches_every_parameter(processor: Processor) -> None:
    torch.manual_seed(0)
    model = VLAModel(processor.config).train()
    inputs = processor.inputs([observation(1), observation(2, TASKS[1])])
    ids, mask = processor.encode_reasoning([format_reasoning(REASONING), None])
    losses = model.compute_loss(
        replace(inputs, reasoning_ids=ids, reasoning_mask=mask), torch.randn(2, 4, 7)
    )
    assert set(losses) == {"loss", "action_loss", "reasoning_loss"}
    losses["loss"].backward()
    missing = [name for name, parameter in model.named_parameters() if parameter.grad is None]
    assert not missing, f"no gradient for {missing}"


def test_reasoning_dropout(processor: Processor) -> None:
    frame = REASONING.to_frame()
    rng = np.random.default_rng(0)
    assert processor.reasoning_text(frame, rng) == format_reasoning(REASONING)
    always_drop = Processor(
        processor.config,
        ProcessorConfig(reasoning_dropout=1.0),
        dataset_stats(),
        processor.tokenizer,
    )
    assert always_drop.reasoning_text(frame, rng) is None
    some_tags = Processor(
        processor.config,
        ProcessorConfig(reasoning_dropout=0.0, tag_dropout=0.5),
        dataset_stats(),
        processor.tokenizer,
    )
    texts = {some_tags.reasoning_text(frame, np.random.default_rng(seed)) for seed in range(40)}
    assert len(texts) > 5 and all(text for text in texts), (
        "tag dropout varies the chain, never empties it"
    )
    half = Processor(
        processor.config,
        ProcessorConfig(reasoning_dropout=0.5),
        dataset_stats(),
        processor.tokenizer,
    )
    dropped = sum(
        half.reasoning_text(frame, np.random.default_rng(seed)) is None for seed in range(400)
    )
    assert 150 < dropped < 250
    snapped = Processor(
        processor.config,
        ProcessorConfig(reasoning_dropout=0.0, tag_dropout=0.0, reasoning_pixel_step=8),
        dataset_stats(),
        processor.tokenizer,
    )
    assert snapped.reasoning_text(frame, rng) == (
        "PLAN: pick up the red cube; place it on the plate. SUBTASK: pick up the red cube. "
        "MOVE: move left down. GRIPPER: [64,40] [64,48]. OBJECTS: red cube [48,40,64,48]."
    )
    with pytest.raises(ValueError, match="reasoning_pixel_step must be >= 1"):
        ProcessorConfig(reasoning_pixel_step=0)
    ids, mask = processor.encode_reasoning([format_reasoning(REASONING), None])
    assert mask[1].sum() == 0 and ids[0, mask[0].sum() - 1] == processor.tokenizer.eos_token_id
    assert processor.decode_reasoning(ids, mask) == [format_reasoning(REASONING), ""]


class CountingPolicy(VLAPolicy):
    def infer(self, observations, *, think=False, reasoning=None, noise=None):
        self.modes = getattr(self, "modes", []) + [
            "generate" if think and reasoning is None else "reuse" if reasoning else "act"
        ]
        return super().infer(observations, think=think, reasoning=reasoning, noise=noise)


def test_policy_regenerates_every_k_chunks(processor: Processor) -> None:
    torch.manual_seed(0)
    model = VLAModel(processor.config.replace(max_reasoning_tokens=8)).eval()
    policy = CountingPolicy(model, processor, n_action_steps=2, think=True, reasoning_every=3)
    for step in range(12):
        action = policy.select_action(observation(step))
        assert action.shape == (7,) and np.isfinite(action).all()
    assert policy.modes == ["generate", "reuse", "reuse", "generate", "reuse", "reuse"]
    assert isinstance(policy.last_reasoning, str)
    out = policy.infer([observation(0), observation(1)], think=True)
    assert out["actions"].shape == (2, 4, 7) and len(out["reasoning"]) == 2


def test_split_reasoning_passes_give_the_padded_single_pass_loss() -> None:
    """Items with and without a chain trained as two passes: same losses and gradients as one
    pass with every item padded to the longest chain."""
    config = VLAConfig.named("tiny", action_horizon=4, num_inference_steps=2)
    torch.manual_seed(0)
    model = VLAModel(config)
    inputs = ModelInputs.fake(config, batch=3)
    ids = torch.randint(0, 500, (3, 7))
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[0, :7], mask[2, :4] = True, True  # item 1 acts without thinking
    inputs = replace(inputs, reasoning_ids=ids, reasoning_mask=mask)
    assert [rows.tolist() for rows in inputs.reasoning_groups()] == [[0, 2], [1]]
    actions, noise = torch.randn(3, 4, 7), torch.randn(3, 4, 7)
    time, pad = torch.tensor([0.2, 0.5, 0.9]), torch.zeros(3, 4, dtype=torch.bool)
    pad[2, 3] = True
    results = []
    for split in (True, False):
        model.zero_grad()
        losses = model.compute_loss(
            inputs, actions, pad, noise=noise, time=time, split_reasoning=split
        )
        losses["loss"].backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append(({k: v.detach() for k, v in losses.items()}, grads))
    (split_losses, split_grads), (single_losses, single_grads) = results
    assert split_losses.keys() == single_losses.keys() == {"loss", "action_loss", "reasoning_loss"}
    for key in split_losses:
        assert torch.allclose(split_losses[key], single_losses[key], atol=1e-6), key
    assert torch.allclose(split_grads, single_grads, atol=1e-5)
