"""ActionChunker: the one chunk → action stream that eval, select_action and the controller share."""

from __future__ import annotations

import numpy as np
import pytest

from vla.robot.chunker import ActionChunker, ChunkerConfig, default_n_action_steps


def chunk(first: float, horizon: int = 6, dim: int = 7) -> np.ndarray:
    """(horizon, dim) whose action i is `first + i` everywhere: an action's value names its step."""
    return np.repeat(first + np.arange(horizon, dtype=np.float32)[:, None], dim, axis=1)


def test_default_is_half_the_chunk_and_at_least_one() -> None:
    assert [default_n_action_steps(h) for h in (1, 2, 7, 10)] == [1, 1, 3, 5]


def test_receding_horizon_executes_n_action_steps_then_asks_again() -> None:
    chunker = ActionChunker(ChunkerConfig(n_action_steps=4))
    assert chunker.next_call() == "act"
    chunker.add(chunk(0))
    assert chunker.next_call() is None
    np.testing.assert_array_equal(chunker.pop_action(), np.zeros(7))  # one at a time...
    np.testing.assert_array_equal(chunker.pop_actions()[:, 0], [1, 2, 3])  # ...or the rest at once
    assert chunker.next_call() == "act"
    with pytest.raises(RuntimeError, match="no actions queued"):
        chunker.pop_actions()


def test_default_n_action_steps_follows_the_chunk_and_is_capped_by_it() -> None:
    default = ActionChunker()
    default.add(chunk(0, horizon=10))
    assert len(default.pop_actions()) == 5
    capped = ActionChunker(ChunkerConfig(n_action_steps=8))
    capped.add(chunk(0, horizon=3))
    assert len(capped.pop_actions()) == 3


def test_temporal_ensemble_weights_older_chunks_more() -> None:
    k = 0.5
    chunker = ActionChunker(ChunkerConfig(temporal_ensemble=k))
    chunker.add(chunk(0, horizon=3))
    np.testing.assert_array_equal(chunker.pop_actions(), np.zeros((1, 7)))
    assert chunker.next_call() == "act"  # ensembling predicts every step
    chunker.add(chunk(10, horizon=3))
    # step 1: the first chunk's action 1 (weight 1) and the second's action 0 (weight e^-k)
    expected = (1.0 + np.exp(-k) * 10.0) / (1.0 + np.exp(-k))
    np.testing.assert_allclose(chunker.pop_action(), np.full(7, expected), rtol=1e-6)
    chunker.add(chunk(20, horizon=3))
    chunker.add(chunk(30, horizon=3))  # step 2: chunks 1..3 cover it (chunk 4 starts at step 2 too)
    weights = np.exp(-k * np.arange(4))
    expected = (weights * [2.0, 11.0, 20.0, 30.0]).sum() / weights.sum()
    np.testing.assert_allclose(chunker.pop_action(), np.full(7, expected), rtol=1e-6)
    chunker.pop_action()  # step 3: the first chunk (steps 0..2) no longer covers it
    with pytest.raises(RuntimeError, match="no chunk covers step 5"):
        for _ in range(3):
            chunker.pop_action()


def test_reasoning_is_generated_every_k_chunks_and_reused_in_between() -> None:
    chunker = ActionChunker(ChunkerConfig(n_action_steps=1, think=True, reasoning_every=3))
    kinds = []
    for index in range(7):
        kind = chunker.next_call()
        kinds.append(kind)
        chunker.add(chunk(index), reasoning=f"chain {index}" if kind == "think" else None)
        assert chunker.reasoning == f"chain {index - index % 3}"  # reuse keeps the last chain
        chunker.pop_actions()
    assert kinds == ["think", "reuse", "reuse", "think", "reuse", "reuse", "think"]
    chunker.reset()
    assert chunker.reasoning is None and chunker.next_call() == "think"


def test_reset_forgets_the_episode() -> None:
    chunker = ActionChunker(ChunkerConfig(temporal_ensemble=0.1))
    chunker.add(chunk(5))
    chunker.pop_action()
    chunker.reset()
    chunker.add(chunk(0))
    np.testing.assert_array_equal(chunker.pop_action(), np.zeros(7))  # step 0 again, one chunk


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_action_steps": 0}, "n_action_steps"),
        ({"temporal_ensemble": -1.0}, "temporal_ensemble"),
        ({"temporal_ensemble": float("nan")}, "temporal_ensemble"),
        ({"reasoning_every": 0}, "reasoning_every"),
    ],
)
def test_bad_settings_are_refused_by_name(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ChunkerConfig(**options)


def test_bad_chunks_are_refused() -> None:
    chunker = ActionChunker()
    with pytest.raises(ValueError, match="shape"):
        chunker.add(np.zeros(7))
    assert chunker.next_call() == "act"  # nothing was queued
