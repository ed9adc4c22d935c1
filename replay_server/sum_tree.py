"""A vectorized sum tree (plus min tree) over a fixed number of leaves, for prioritized sampling.

Leaves hold priorities p_i^alpha. Batched updates and batched proportional sampling walk the tree
one level at a time with numpy, so a batch of 256 costs about log2(capacity) vector operations.
"""
from __future__ import annotations

import numpy as np


class SumTree:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._leaf0 = 1 << max(0, (capacity - 1).bit_length())      # leaves start here (power of two)
        self._sum = np.zeros(2 * self._leaf0, dtype=np.float64)
        self._min = np.full(2 * self._leaf0, np.inf, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self._sum[1])

    @property
    def min(self) -> float:
        """Smallest non-zero leaf (inf when all are zero): normalises importance-sampling weights."""
        return float(self._min[1])

    def get(self, index) -> np.ndarray:
        return self._sum[self._leaf0 + np.asarray(index)]

    def update(self, index, value) -> None:
        """Set leaves `index` to `value` (arrays; the last write wins for repeated indices)."""
        index = np.asarray(index, dtype=np.int64).ravel()
        value = np.broadcast_to(np.asarray(value, dtype=np.float64), index.shape)
        if index.size == 0:
            return
        if index.min() < 0 or index.max() >= self.capacity:
            raise IndexError("sum-tree index out of range")
        if np.any(value < 0) or not np.all(np.isfinite(value)):
            raise ValueError("priorities must be finite and non-negative")
        nodes = index + self._leaf0
        self._sum[nodes] = value
        self._min[nodes] = np.where(value > 0, value, np.inf)   # a cleared leaf does not count as min
        for _ in range(self._leaf0.bit_length() - 1):          # one pass per level, up to the root
            nodes >>= 1                                         # a parent met twice is recomputed to
            left = nodes << 1                                   # the same value: cheaper than np.unique
            self._sum[nodes] = self._sum[left] + self._sum[left + 1]
            self._min[nodes] = np.minimum(self._min[left], self._min[left + 1])

    def find(self, targets: np.ndarray) -> np.ndarray:
        """Leaf index for each prefix-sum target in [0, total): the proportional-sampling walk."""
        targets = np.array(targets, dtype=np.float64)
        nodes = np.ones(targets.shape, dtype=np.int64)
        while nodes[0] < self._leaf0:
            left = nodes << 1
            left_sum = self._sum[left]
            go_right = targets >= left_sum
            targets = np.where(go_right, targets - left_sum, targets)
            nodes = np.where(go_right, left + 1, left)
        leaves = nodes - self._leaf0
        # Float round-off can land on an empty leaf at the right edge; step back to a non-empty one.
        empty = self._sum[nodes] <= 0
        if np.any(empty):
            leaves[empty] = self._last_nonzero_before(leaves[empty])
        return leaves

    def _last_nonzero_before(self, leaves: np.ndarray) -> np.ndarray:
        nonzero = np.flatnonzero(self._sum[self._leaf0:self._leaf0 + self.capacity] > 0)
        pos = np.searchsorted(nonzero, leaves, side="right") - 1
        return nonzero[np.maximum(pos, 0)]

    def sample(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """Stratified proportional sampling: one uniform draw in each of batch_size equal segments."""
        total = self.total
        if total <= 0:
            raise ValueError("cannot sample from an empty sum tree")
        segment = total / batch_size
        targets = (np.arange(batch_size) + rng.random(batch_size)) * segment
        return self.find(np.minimum(targets, np.nextafter(total, 0)))

    # --- state for checkpoints ------------------------------------------------------------
    def leaves(self) -> np.ndarray:
        return self._sum[self._leaf0:self._leaf0 + self.capacity].copy()
