"""Training-free feature caching across denoising steps of the action expert.

Adjacent denoising steps feed the expert nearly the same input, so many of its blocks (each
layer's attention and MLP sub-blocks) produce nearly the same output. A feature cache stores
each block's residual contribution when the block is computed ("refreshed") and reuses it at the
steps where the schedule says not to refresh, skipping that block's work entirely.

Schedules:
- `uniform_schedule(steps, every)`: every block refreshes on steps 0, every, 2*every, ...
- `adaptive_schedule(features, refreshes)`: per block, offline, as Block-wise Adaptive Caching
  (BAC) does: from features recorded in an uncached run (`profile_block_features`), pick for
  each block the `refreshes` steps that maximize the summed cosine similarity between every
  step's true feature and the cached one it would reuse (exact dynamic programming), then apply
  the "bubbling union": whenever a downstream MLP block refreshes, every block upstream of it
  refreshes at that step too, so a stale upstream feature cannot feed a fresh downstream one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

Block = tuple[int, str]  # (layer index, "attention" | "mlp")
BLOCK_KINDS = ("attention", "mlp")


@dataclass
class FeatureCache:
    """Which steps each block refreshes on, and the block outputs kept in between."""

    refresh_steps: dict[Block, frozenset[int]]
    stored: dict[Block, torch.Tensor] = field(default_factory=dict)
    step: int = 0
    computed: int = 0  # blocks actually evaluated, for reporting the work saved
    reused: int = 0

    def should_refresh(self, block: Block) -> bool:
        return block not in self.stored or self.step in self.refresh_steps.get(
            block, frozenset({self.step})
        )

    def output(self, block: Block, compute) -> torch.Tensor:  # noqa: ANN001 - a zero-argument callable
        """The block's output: computed now, or the stored one from its last refresh."""
        if self.should_refresh(block):
            self.stored[block] = compute()
            self.computed += 1
        else:
            self.reused += 1
        return self.stored[block]

    def reset(self) -> None:
        self.stored.clear()
        self.step = 0


def all_blocks(num_layers: int) -> list[Block]:
    """Blocks in the order data flows through them."""
    return [(layer, kind) for layer in range(num_layers) for kind in BLOCK_KINDS]


def uniform_schedule(num_layers: int, steps: int, every: int) -> dict[Block, frozenset[int]]:
    if every < 1:
        raise ValueError(f"refresh interval must be >= 1, got {every}")
    refresh = frozenset(range(0, steps, every))
    return {block: refresh for block in all_blocks(num_layers)}


def best_refresh_steps(similarity: torch.Tensor, refreshes: int) -> frozenset[int]:
    """Exactly `refreshes` steps (always including 0) that maximize
    sum_s similarity[s, last refresh at or before s]; exact dynamic programming.

    `similarity` is (steps, steps): similarity[s, r] says how well the feature computed at step r
    stands in for the true feature of step s.
    """
    steps = similarity.shape[0]
    refreshes = max(1, min(refreshes, steps))
    cumulative = torch.zeros(steps, steps + 1, dtype=torch.float64)
    cumulative[:, 1:] = torch.cumsum(similarity.T.to(torch.float64), dim=1)

    def reuse_gain(refresh: int, end: int) -> float:
        """Similarity summed over steps refresh..end-1 all reusing the feature of `refresh`."""
        return float(cumulative[refresh, end] - cumulative[refresh, refresh])

    # best[k][r]: the best total over steps r.. when r refreshes and k refreshes (incl. r) remain
    best = [[float("-inf")] * steps for _ in range(refreshes + 1)]
    following: dict[tuple[int, int], int] = {}
    for start in range(steps):
        best[1][start] = reuse_gain(start, steps)
        following[(1, start)] = steps
    for k in range(2, refreshes + 1):
        for start in range(steps - k, -1, -1):
            for after in range(start + 1, steps - k + 2):
                total = reuse_gain(start, after) + best[k - 1][after]
                if total > best[k][start]:
                    best[k][start], following[(k, start)] = total, after
    chosen, start, k = [], 0, refreshes
    while start < steps:
        chosen.append(start)
        start, k = following[(k, start)], k - 1
    return frozenset(chosen)


def bubbling_union(
    schedule: dict[Block, frozenset[int]], num_layers: int
) -> dict[Block, frozenset[int]]:
    """Whenever an MLP block refreshes, every block upstream of it refreshes at that step too."""
    order = all_blocks(num_layers)
    result = {block: set(schedule.get(block, ())) for block in order}
    for position, block in enumerate(order):
        if block[1] != "mlp":
            continue
        for upstream in order[:position]:
            result[upstream] |= result[block]
    return {block: frozenset(steps) for block, steps in result.items()}


def adaptive_schedule(
    features: dict[Block, torch.Tensor], refreshes: int, num_layers: int
) -> dict[Block, frozenset[int]]:
    """BAC-style per-block schedule from profiled features: block -> (steps, ...) tensors."""
    schedule = {}
    for block, per_step in features.items():
        flat = torch.nn.functional.normalize(per_step.flatten(1).double(), dim=1)  # (steps, F)
        schedule[block] = best_refresh_steps(flat @ flat.T, refreshes)
    return bubbling_union(schedule, num_layers)
