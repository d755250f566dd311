"""Feature caching across denoising steps: exact when every block refreshes, skips the work it
says it skips, an optimal per-block schedule, and the bubbling union."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import fake_inputs

from vla.config import VLAConfig
from vla.feature_cache import (
    FeatureCache,
    adaptive_schedule,
    all_blocks,
    best_refresh_steps,
    bubbling_union,
    uniform_schedule,
)
from vla.model import VLAModel, profile_block_features


@pytest.fixture(scope="module")
def model() -> VLAModel:
    torch.manual_seed(0)
    return VLAModel(VLAConfig.named("tiny", num_inference_steps=10)).eval()


def test_refreshing_every_step_is_exactly_uncached(model: VLAModel) -> None:
    inputs = fake_inputs(model.config)
    noise = torch.randn(3, model.config.action_horizon, 7)
    layers = model.geometry.num_layers
    cache = FeatureCache(uniform_schedule(layers, 10, every=1))
    with_cache = model.sample_actions(inputs, noise=noise, feature_cache=cache)
    torch.testing.assert_close(
        with_cache, model.sample_actions(inputs, noise=noise), atol=0, rtol=0
    )
    assert cache.reused == 0 and cache.computed == 10 * 2 * layers


def test_uniform_schedule_skips_blocks(model: VLAModel) -> None:
    inputs = fake_inputs(model.config)
    noise = torch.randn(3, model.config.action_horizon, 7)
    layers = model.geometry.num_layers
    cache = FeatureCache(uniform_schedule(layers, 10, every=2))
    cached = model.sample_actions(inputs, noise=noise, feature_cache=cache)
    assert cache.computed == 5 * 2 * layers and cache.reused == 5 * 2 * layers
    reference = model.sample_actions(inputs, noise=noise)
    assert torch.isfinite(cached).all() and not torch.equal(cached, reference)
    with pytest.raises(ValueError, match="use_cache=True"):
        model.sample_actions(inputs, noise=noise, use_cache=False, feature_cache=cache)


def brute_force(similarity: torch.Tensor, refreshes: int) -> float:
    steps = similarity.shape[0]
    best = float("-inf")
    for others in itertools.combinations(range(1, steps), refreshes - 1):
        chosen = (0, *others)
        total = sum(similarity[s, max(c for c in chosen if c <= s)].item() for s in range(steps))
        best = max(best, total)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_refresh_steps_are_optimal(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    similarity = torch.rand(7, 7, generator=generator, dtype=torch.float64)
    for refreshes in (1, 2, 3, 4):
        chosen = best_refresh_steps(similarity, refreshes)
        assert 0 in chosen and len(chosen) == refreshes
        total = sum(similarity[s, max(c for c in chosen if c <= s)].item() for s in range(7))
        assert total == pytest.approx(brute_force(similarity, refreshes))


def test_bubbling_union_refreshes_everything_upstream_of_an_mlp_refresh() -> None:
    schedule = {block: frozenset({0}) for block in all_blocks(3)}
    schedule[(2, "mlp")] = frozenset({0, 5})
    schedule[(1, "attention")] = frozenset({0, 3})
    merged = bubbling_union(schedule, 3)
    for block in all_blocks(3):
        assert 5 in merged[block], block  # every block is upstream of (or is) layer 2's MLP
    assert merged[(1, "attention")] == {0, 3, 5}
    assert 3 not in merged[(0, "attention")], "an attention refresh does not bubble"


def test_adaptive_schedule_from_profiled_features(model: VLAModel) -> None:
    inputs = fake_inputs(model.config)
    noise = torch.randn(3, model.config.action_horizon, 7)
    features = profile_block_features(model, inputs, noise)
    layers = model.geometry.num_layers
    assert set(features) == set(all_blocks(layers))
    assert features[(0, "mlp")].shape == (
        10,
        3,
        1 + model.config.action_horizon,
        model.config.expert_hidden_size,
    )
    schedule = adaptive_schedule(features, refreshes=4, num_layers=layers)
    last_mlp = (layers - 1, "mlp")
    assert all(0 in steps for steps in schedule.values())
    assert len(schedule[last_mlp]) == 4
    for position, block in enumerate(all_blocks(layers)):
        if block[1] == "mlp":
            assert all(
                schedule[block] <= schedule[upstream] for upstream in all_blocks(layers)[:position]
            )
    cache = FeatureCache(schedule)
    actions = model.sample_actions(inputs, noise=noise, feature_cache=cache)
    assert torch.isfinite(actions).all() and cache.reused > 0
