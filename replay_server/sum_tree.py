"""A sum tree (plus min tree) over a fixed number of leaves, for prioritized sampling.

Leaves hold priorities p_i^alpha. The tree walks are compiled with numba: a batch of 32 is a few
hundred scalar steps, which numpy's per-call overhead made cost ten times what the arithmetic does
(0.4 ms per sample + update at batch 32, against about 20 us compiled). The compiled code is cached
next to this file, so only the first process after an install pays the few seconds of compiling.
"""

from __future__ import annotations

import numba
import numpy as np

_OK, _BAD_INDEX, _BAD_VALUE = 0, 1, 2


@numba.njit(cache=True, nogil=True)
def _update(sums, mins, leaf0, capacity, index, value):
    """Set leaves, then recompute their ancestors; checks everything before changing anything."""
    for k in range(index.size):
        if index[k] < 0 or index[k] >= capacity:
            return _BAD_INDEX
        if not (value[k] >= 0.0 and value[k] < np.inf):  # also false for NaN
            return _BAD_VALUE
    for k in range(index.size):
        node = index[k] + leaf0
        sums[node] = value[k]
        mins[node] = value[k] if value[k] > 0.0 else np.inf  # a cleared leaf does not count as min
        node >>= 1
        while node >= 1:
            left = node << 1
            sums[node] = sums[left] + sums[left + 1]
            mins[node] = min(mins[left], mins[left + 1])
            node >>= 1
    return _OK


@numba.njit(cache=True, nogil=True)
def _find(sums, leaf0, targets, leaves):
    """Walk from the root to the leaf whose prefix-sum range holds each target."""
    for k in range(targets.size):
        target, node = targets[k], 1
        while node < leaf0:
            left = node << 1
            if target >= sums[left]:
                target -= sums[left]
                node = left + 1
            else:
                node = left
        leaves[k] = node - leaf0


class SumTree:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._leaf0 = 1 << max(0, (capacity - 1).bit_length())  # leaves start here (power of two)
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
        index = np.ascontiguousarray(index, dtype=np.int64).ravel()
        value = np.ascontiguousarray(np.broadcast_to(np.asarray(value, dtype=np.float64), index.shape))
        status = _update(self._sum, self._min, self._leaf0, self.capacity, index, value)
        if status == _BAD_INDEX:
            raise IndexError("sum-tree index out of range")
        if status == _BAD_VALUE:
            raise ValueError("priorities must be finite and non-negative")

    def find(self, targets: np.ndarray) -> np.ndarray:
        """Leaf index for each prefix-sum target in [0, total): the proportional-sampling walk."""
        targets = np.ascontiguousarray(targets, dtype=np.float64).ravel()
        leaves = np.empty(targets.shape, dtype=np.int64)
        _find(self._sum, self._leaf0, targets, leaves)
        # Float round-off can land on an empty leaf at the right edge; step back to a non-empty one.
        empty = self._sum[self._leaf0 + leaves] <= 0
        if np.any(empty):
            leaves[empty] = self._last_nonzero_before(leaves[empty])
        return leaves

    def _last_nonzero_before(self, leaves: np.ndarray) -> np.ndarray:
        nonzero = np.flatnonzero(self._sum[self._leaf0 : self._leaf0 + self.capacity] > 0)
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
        return self._sum[self._leaf0 : self._leaf0 + self.capacity].copy()
