"""Prioritized replay that stores each frame once.

Actors send chunks of n-step transitions: the chunk's frames once each, plus for every
transition the indices of 2S frames (obs = first S, next obs = last S). The buffer keeps
two rings, one of frames and one of transitions, and each transition stores the frame-ring slots
of its stack, so stacks are rebuilt by index at sampling time. Chunks are evicted whole and
oldest first, so a live transition never points at an overwritten frame.

Priorities follow Schaul et al. (2016): P(i) = p_i^alpha / sum p^alpha, new transitions get the
largest priority seen so far, and importance-sampling weights (N P(i))^-beta are normalised by
their largest possible value (that of the smallest priority in the buffer).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from common.config import MAX_N_STEP
from common.shared_frames import FrameRing
from replay_server.sum_tree import SumTree

FRAME_SLACK = 8  # the frame ring holds capacity * (1 + 1/FRAME_SLACK) frames: room for chunk overlap


class ChunkError(ValueError):
    """A transitions chunk that cannot be stored (bad shapes, indices or values)."""


@dataclass
class Batch:
    ids: np.ndarray  # (B,) int64 global transition ids, for priority updates
    frames: np.ndarray | None  # (B, 2S, H, W) uint8: obs = [:, :S], next obs (n steps on) = [:, S:]
    frame_numbers: np.ndarray  # (B, 2S) int64 global frame numbers of those frames (see FrameRing)
    actions: np.ndarray  # (B,) uint8
    rewards: np.ndarray  # (B,) float32
    bootstraps: np.ndarray  # (B,) float32: discount of the next obs's value (0 after a terminal step)
    weights: np.ndarray  # (B,) float32 importance-sampling weights, max 1


class PrioritizedReplay:
    def __init__(self, capacity: int, frame_size: int, frame_stack: int, alpha: float, num_actions: int):
        self.capacity = capacity
        self.frame_capacity = capacity + capacity // FRAME_SLACK + 1
        self.frame_size = frame_size
        self.frame_stack = frame_stack
        self.alpha = alpha
        self.num_actions = num_actions
        self.ring = FrameRing(self.frame_capacity, frame_size)  # shared with a local learner
        self._frames = self.ring.frames
        self._stack = np.zeros((capacity, 2 * frame_stack), dtype=np.int32)
        self._actions = np.zeros(capacity, dtype=np.uint8)
        self._rewards = np.zeros(capacity, dtype=np.float32)
        self._bootstraps = np.zeros(capacity, dtype=np.float32)
        self._ids = np.full(capacity, -1, dtype=np.int64)
        self._tree = SumTree(capacity)
        self._chunks: deque[tuple[int, int]] = deque()  # (transitions, frames) per stored chunk
        self._t_head = 0  # transitions ever stored (next global id)
        self._f_head = 0  # frames ever stored
        self._t_live = 0
        self._f_live = 0
        self.max_priority = 1.0

    def __len__(self) -> int:
        return self._t_live

    def close(self) -> None:
        """Free the frame ring's shared memory now, not whenever the last reference to the buffer goes;
        the buffer is unusable after. Idempotent."""
        self._frames = None  # a view of the ring: it would keep the ring mapped
        self.ring.close()

    @property
    def inserted(self) -> int:
        return self._t_head

    def nbytes(self) -> int:
        arrays = (
            self._frames,
            self._stack,
            self._actions,
            self._rewards,
            self._bootstraps,
            self._ids,
            self._tree._sum,
            self._tree._min,
        )
        return sum(a.nbytes for a in arrays)

    # --- insert ------------------------------------------------------------------------------
    def add_chunk(
        self, frames: np.ndarray, stack: np.ndarray, actions: np.ndarray, rewards: np.ndarray, bootstraps: np.ndarray
    ) -> int:
        """Store one chunk; returns how many transitions were added. Raises ChunkError."""
        n, m = self._check_chunk(frames, stack, actions, rewards, bootstraps)
        while self._t_live + n > self.capacity or self._f_live + m > self.frame_capacity:
            self._evict_oldest_chunk()
        self.ring.wait_for_snapshot(self._f_head + m - self.frame_capacity)
        self.ring.announce(self._f_head + m)
        frame_slots = (self._f_head + np.arange(m)) % self.frame_capacity
        self._frames[frame_slots] = frames
        slots = (self._t_head + np.arange(n)) % self.capacity
        self._stack[slots] = (self._f_head + stack.astype(np.int64)) % self.frame_capacity
        self._actions[slots] = actions
        self._rewards[slots] = rewards
        self._bootstraps[slots] = bootstraps
        self._ids[slots] = self._t_head + np.arange(n)
        self._tree.update(slots, self.max_priority**self.alpha)
        self._chunks.append((n, m))
        self._t_head += n
        self._f_head += m
        self._t_live += n
        self._f_live += m
        return n

    def _check_chunk(self, frames, stack, actions, rewards, bootstraps) -> tuple[int, int]:
        s, size = self.frame_stack, self.frame_size
        if frames.dtype != np.uint8 or frames.shape[1:] != (size, size) or frames.ndim != 3:
            raise ChunkError(f"frames must be uint8 (m, {size}, {size}), got {frames.dtype} {frames.shape}")
        if actions.ndim != 1 or rewards.shape != actions.shape or bootstraps.shape != actions.shape:
            raise ChunkError("actions, rewards and bootstraps must be 1-D of equal length")
        n, m = len(actions), len(frames)
        if stack.shape != (n, 2 * s) or stack.dtype.kind not in "iu":
            raise ChunkError(f"stack must be integer ({n}, {2 * s}), got {stack.dtype} {stack.shape}")
        if n == 0 or m == 0:
            raise ChunkError("empty chunk")
        if n > self.capacity or m > self.frame_capacity or m > n + s + MAX_N_STEP:
            raise ChunkError(f"chunk of {n} transitions and {m} frames is too large")
        if stack.min() < 0 or stack.max() >= m:
            raise ChunkError("stack indices out of range")
        if actions.dtype.kind not in "iu" or actions.min() < 0 or actions.max() >= self.num_actions:
            raise ChunkError("action out of range")
        if rewards.dtype.kind != "f" or not np.all(np.isfinite(rewards)):
            raise ChunkError("rewards must be finite floats")
        if bootstraps.dtype.kind != "f" or not np.all((bootstraps >= 0) & (bootstraps <= 1)):
            raise ChunkError("bootstraps must be floats between 0 and 1")
        return n, m

    def _evict_oldest_chunk(self) -> None:
        n, m = self._chunks.popleft()
        slots = (self._t_head - self._t_live + np.arange(n)) % self.capacity
        self._tree.update(slots, 0.0)
        self._ids[slots] = -1
        self._t_live -= n
        self._f_live -= m

    # --- sample ------------------------------------------------------------------------------
    def sample(self, batch_size: int, beta: float, rng: np.random.Generator, with_frames: bool = True) -> Batch:
        """A prioritized batch; without frames (for a learner that reads the shared ring) it carries
        only their global numbers."""
        if self._t_live == 0:
            raise ValueError("cannot sample from an empty buffer")
        slots = self._tree.sample(batch_size, rng)
        total = self._tree.total
        probs = self._tree.get(slots) / total
        min_prob = self._tree.min / total
        weights = (probs / min_prob) ** (-beta)  # = (N P(i))^-beta / (N P_min)^-beta
        stack = self._stack[slots].astype(np.int64)
        newest = self._f_head - 1  # live frames are numbered newest - (0..fc-1)
        numbers = newest - (newest - stack) % self.frame_capacity
        return Batch(
            ids=self._ids[slots],
            frames=self._frames[stack] if with_frames else None,
            frame_numbers=numbers,
            actions=self._actions[slots],
            rewards=self._rewards[slots],
            bootstraps=self._bootstraps[slots],
            weights=weights.astype(np.float32),
        )

    def update_priorities(self, ids: np.ndarray, priorities: np.ndarray) -> int:
        """Set new priorities (|TD error| + eps) for still-stored ids; returns how many applied."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        priorities = np.asarray(priorities, dtype=np.float64).ravel()
        if ids.shape != priorities.shape:
            raise ChunkError("ids and priorities differ in length")
        if not np.all(np.isfinite(priorities)) or np.any(priorities <= 0):
            raise ChunkError("priorities must be finite and positive")
        if np.any(ids < 0):  # never given out; stale or future ids (from before a restart) are ignored
            raise ChunkError("negative ids")
        slots = ids % self.capacity
        live = (ids >= 0) & (self._ids[slots] == ids)
        if np.any(live):
            self._tree.update(slots[live], priorities[live] ** self.alpha)
            self.max_priority = max(self.max_priority, float(priorities[live].max()))
        return int(live.sum())

    def probabilities(self) -> np.ndarray:
        """P(i) for every slot (for tests and diagnostics)."""
        leaves = self._tree.leaves()
        return leaves / leaves.sum()

    # --- snapshots -----------------------------------------------------------------------------
    def oldest_frame(self) -> int:
        """The global number of the oldest live frame."""
        return self._f_head - self._f_live

    @property
    def frames_written(self) -> int:
        """Frames ever stored: the live ones are numbered oldest_frame() up to this."""
        return self._f_head

    def frame_views(self, first: int, end: int) -> list[np.ndarray]:
        """The live frames numbered first..end-1 as (at most) two views of the ring, oldest first: no copy,
        which matters in the forked snapshot writer (a copy would double the memory of a 1M buffer)."""
        if not self.oldest_frame() <= first <= end <= self._f_head:
            raise ValueError(f"frames {first}..{end} are not all live")
        start = first % self.frame_capacity
        head = min(end - first, self.frame_capacity - start)
        return [self._frames[start : start + head], self._frames[: end - first - head]]

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The live contents as plain arrays (frames once each, oldest first) for a snapshot file."""
        frames, wrapped = self.frame_views(self.oldest_frame(), self._f_head)
        t_slots = (self._t_head - self._t_live + np.arange(self._t_live)) % self.capacity
        return {
            "frames": frames,
            "frames_wrapped": wrapped,
            "stack": self._stack[t_slots],
            "actions": self._actions[t_slots],
            "rewards": self._rewards[t_slots],
            "bootstraps": self._bootstraps[t_slots],
            "ids": self._ids[t_slots],
            "priorities": self._tree.get(t_slots),
            "chunks": np.array(self._chunks, dtype=np.int64).reshape(-1, 2),
            "heads": np.array([self._t_head, self._f_head, self._t_live, self._f_live], dtype=np.int64),
            "shape": np.array(
                [self.capacity, self.frame_capacity, self.frame_size, self.frame_stack, self.num_actions],
                dtype=np.int64,
            ),
            "max_priority": np.array(self.max_priority),
            "alpha": np.array(self.alpha),
        }

    def load_state_arrays(self, arrays, frame_parts: list[np.ndarray] | None = None) -> None:
        """Restore `state_arrays` output into this (empty, same-shaped) buffer; the live frames come from
        `frame_parts` (oldest first) where given, else from the arrays. Raises ChunkError."""
        try:
            shape = tuple(int(v) for v in arrays["shape"])
            if shape != (self.capacity, self.frame_capacity, self.frame_size, self.frame_stack, self.num_actions):
                raise ChunkError(
                    f"replay snapshot has capacity/frame/stack/actions {shape[0]}/{shape[2]}/{shape[3]}/"
                    f"{shape[4]}, this run {self.capacity}/{self.frame_size}/{self.frame_stack}/"
                    f"{self.num_actions}"
                )
            t_head, f_head, t_live, f_live = (int(v) for v in arrays["heads"])
            chunks = arrays["chunks"]
            if len(arrays["ids"]) != t_live or chunks[:, 0].sum() != t_live or chunks[:, 1].sum() != f_live:
                raise ChunkError("replay snapshot is inconsistent (counts do not match)")
            if frame_parts is None:
                frame_parts = [arrays["frames"], arrays["frames_wrapped"]]
            if sum(len(part) for part in frame_parts) != f_live:
                raise ChunkError("replay snapshot is inconsistent (frame count does not match)")
            t_slots = (t_head - t_live + np.arange(t_live)) % self.capacity
            self.ring.announce(f_head)
            number = f_head - f_live
            for part in frame_parts:  # slice by slice: never the whole memory twice
                done = 0
                while done < len(part):
                    slot = (number + done) % self.frame_capacity
                    count = min(len(part) - done, self.frame_capacity - slot)
                    self._frames[slot : slot + count] = part[done : done + count]
                    done += count
                number += len(part)
            for name in ("stack", "actions", "rewards", "bootstraps", "ids"):
                getattr(self, f"_{name}")[t_slots] = arrays[name]
            self._tree.update(t_slots, arrays["priorities"])
        except (KeyError, ValueError, IndexError, TypeError) as exc:
            raise ChunkError(f"replay snapshot is damaged ({type(exc).__name__})") from None
        self._chunks = deque((int(n), int(m)) for n, m in chunks)
        self._t_head, self._f_head, self._t_live, self._f_live = t_head, f_head, t_live, f_live
        self.max_priority = float(arrays["max_priority"])

    def content_hash(self) -> str:
        """A digest of the live contents and priorities: equal hashes mean identical replay memory."""
        import hashlib

        digest = hashlib.sha256()
        for name, array in sorted(self.state_arrays().items()):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()
