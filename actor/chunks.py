"""Builds the "transitions" chunks an actor sends: each frame once, stacks as frame indices.

A transition's obs is the stack of its last S frames and its next obs shares S-1 of them, so
the chunk carries the frames once and, per transition, the S+1 indices [obs..., newest next].
After a send, the frames of the current stack stay as the next chunk's context.
"""
from __future__ import annotations

import numpy as np


class ChunkBuilder:
    def __init__(self, frame_stack: int):
        self.frame_stack = frame_stack
        self._frames: list[np.ndarray] = []
        self._current: list[int] = []          # frame indices of the current observation
        self._stack: list[list[int]] = []
        self._actions: list[int] = []
        self._rewards: list[float] = []
        self._dones: list[bool] = []

    def __len__(self) -> int:
        return len(self._actions)

    def start_episode(self, first_frame: np.ndarray) -> None:
        """A reset stacks the first frame S times, so the stack is S copies of one index."""
        self._clear_transitions()
        self._frames = [first_frame]
        self._current = [0] * self.frame_stack

    def add(self, next_frame: np.ndarray, action: int, reward: float, terminated: bool) -> None:
        self._frames.append(next_frame)
        newest = len(self._frames) - 1
        self._stack.append(self._current + [newest])
        self._current = self._current[1:] + [newest]
        self._actions.append(action)
        self._rewards.append(reward)
        self._dones.append(terminated)

    def take(self) -> dict:
        """The chunk's arrays; keeps only the current stack's frames as context for the next one."""
        chunk = {"frames": np.stack(self._frames), "stack": np.asarray(self._stack, dtype=np.int32),
                 "actions": np.asarray(self._actions, dtype=np.uint8),
                 "rewards": np.asarray(self._rewards, dtype=np.float32),
                 "dones": np.asarray(self._dones, dtype=bool)}
        kept = sorted(set(self._current))
        remap = {old: new for new, old in enumerate(kept)}
        self._frames = [self._frames[i] for i in kept]
        self._current = [remap[i] for i in self._current]
        self._clear_transitions()
        return chunk

    def _clear_transitions(self) -> None:
        self._stack, self._actions, self._rewards, self._dones = [], [], [], []
