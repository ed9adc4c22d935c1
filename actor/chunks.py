"""Builds the "transitions" chunks an actor sends: n-step transitions, each frame sent once.

Each transition is (obs, action, R, next obs, bootstrap) with R = sum_i gamma^i r_{t+i} over the
k = min(n, steps left) following rewards, next obs the observation k steps later, and
bootstrap = gamma^k, or 0 when the episode terminated within those steps (a truncated episode
still bootstraps from where it was cut). Observations are stacks of S frames; the chunk carries
the frames once and, per transition, 2S indices into them: obs first, next obs second. After a
send, the frames still needed (the current stack and those of transitions waiting for their n
rewards) stay as the next chunk's context.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class ChunkBuilder:
    def __init__(self, frame_stack: int, n_step: int = 1, gamma: float = 0.99):
        self.frame_stack = frame_stack
        self.n_step = n_step
        self.gamma = gamma
        self._frames: list[np.ndarray] = []
        self._current: list[int] = []  # frame indices of the current observation
        self._pending: deque[tuple[list[int], int, float]] = deque()  # (obs, action, reward) awaiting n rewards
        self._stack: list[list[int]] = []
        self._actions: list[int] = []
        self._rewards: list[float] = []
        self._bootstraps: list[float] = []

    def __len__(self) -> int:
        """Finished transitions in this chunk (pending ones are not counted until complete)."""
        return len(self._actions)

    def start_episode(self, first_frame: np.ndarray) -> None:
        """A reset stacks the first frame S times, so the stack is S copies of one index."""
        if self._actions:
            raise RuntimeError("take() the finished transitions before starting a new episode")
        self._pending.clear()
        self._frames = [first_frame]
        self._current = [0] * self.frame_stack

    def add(self, next_frame: np.ndarray, action: int, reward: float, terminated: bool, truncated: bool) -> None:
        self._frames.append(next_frame)
        self._pending.append((self._current, action, reward))
        self._current = self._current[1:] + [len(self._frames) - 1]
        if terminated or truncated:
            while self._pending:
                self._emit(bootstrap_allowed=not terminated)
        elif len(self._pending) == self.n_step:
            self._emit(bootstrap_allowed=True)

    def flush_pending(self) -> None:
        """Complete the waiting transitions now, as a truncation would (the actor is stopping)."""
        while self._pending:
            self._emit(bootstrap_allowed=True)

    def _emit(self, bootstrap_allowed: bool) -> None:
        """The oldest pending transition, completed with the rewards seen since and the current obs."""
        obs, action, _ = self._pending[0]
        k = len(self._pending)
        ret = sum(self.gamma**i * r for i, (_, _, r) in enumerate(self._pending))
        self._pending.popleft()
        self._stack.append(obs + self._current)
        self._actions.append(action)
        self._rewards.append(ret)
        self._bootstraps.append(self.gamma**k if bootstrap_allowed else 0.0)

    def take(self) -> dict:
        """The chunk's arrays; keeps only the frames still needed as context for the next one."""
        chunk = {
            "frames": np.stack(self._frames),
            "stack": np.asarray(self._stack, dtype=np.int32).reshape(-1, 2 * self.frame_stack),
            "actions": np.asarray(self._actions, dtype=np.uint8),
            "rewards": np.asarray(self._rewards, dtype=np.float32),
            "bootstraps": np.asarray(self._bootstraps, dtype=np.float32),
        }
        kept = sorted(set(self._current).union(*(obs for obs, _, _ in self._pending)))
        remap = {old: new for new, old in enumerate(kept)}
        self._frames = [self._frames[i] for i in kept]
        self._current = [remap[i] for i in self._current]
        self._pending = deque(([remap[i] for i in obs], a, r) for obs, a, r in self._pending)
        self._stack, self._actions, self._rewards, self._bootstraps = [], [], [], []
        return chunk
