"""The learner's side of batch delivery: asks the replay server for several batches per request, and
takes their frames from the server's shared frame ring when the learner runs on its machine (only
frame numbers then cross ZeroMQ), else from the message itself.

Small batches are fetched `transitions_per_request` transitions at a time, shuffled and split: each
batch is then a uniform subset of one stratified prioritized sample (the same P(i) and IS weights),
and ZeroMQ's per-message cost, which at batch 32 was as large as the sampling itself, is shared.
The learner and the replay-service benchmark's client both go through this, so the benchmark
measures the learner's own path.
"""

from __future__ import annotations

import platform
from typing import Callable, Iterator

import numpy as np

from common.config import frames_per_message
from common.protocol import ProtocolError, encode
from common.shared_frames import SharedFrames, SharedFramesError, stores_in_order

PER_TRANSITION = ("ids", "actions", "rewards", "bootstraps", "weights")


class ReplayBatches:
    def __init__(
        self,
        batch_size: int,
        per_request: int,
        frame_stack: int,
        frame_size: int,
        use_shared: bool,
        log: Callable[[str], None],
        seed: int = 0,
        max_message_bytes: int = 64 * 1024 * 1024,
    ):
        self.batch_size = batch_size
        self.request_size = batch_size * max(1, per_request // batch_size)  # whole batches
        # Frames in the messages (no shared ring): ask for no more than one message can carry.
        self.travel_size = max(
            batch_size,
            min(self.request_size, frames_per_message(batch_size, frame_stack, frame_size, max_message_bytes)),
        )
        self.frame_stack, self.frame_size = frame_stack, frame_size
        self.rng = np.random.default_rng(seed)
        self.use_shared = use_shared  # the replay server is on this machine (ipc link) and allowed
        self.log = log
        self.ring: SharedFrames | None = None
        self.torn = 0  # batches dropped because the server overwrote their frames meanwhile
        self.reattach = False  # a batch named a ring we do not map: ask again
        self._told: str | None = None
        if use_shared and not stores_in_order():
            self.use_shared = False
            self._tell(
                f"batch frames travel over ZeroMQ: reading the replay server's shared memory needs x86's "
                f"memory ordering to detect overwritten frames, and this CPU is {platform.machine()}"
            )
        self._out: np.ndarray | None = None

    def attach_request(self) -> bytes | None:
        """After each (re)connect to a replay server (a restarted one has a new ring): the question to send."""
        self.close()
        self.reattach = False
        return encode("attach_frames") if self.use_shared else None

    def sample_request(self, beta: float, ids=None, priorities=None) -> bytes:
        """A "sample" request, carrying the last batches' new priorities when given."""
        extra = {} if ids is None else {"ids": ids, "priorities": priorities}
        size = self.request_size
        if self.ring is None and self.travel_size < size:
            size = self.travel_size
            self._tell(
                f"asking for {size} transitions per request, not {self.request_size}: their frames travel "
                f"in the messages, and more would not fit in one (max_message_bytes)"
            )
        return encode("sample", batch_size=size, beta=beta, shared=self.ring is not None, **extra)

    def on_frame_ring(self, msg: dict) -> None:
        """The server's answer to attach_request: map its ring, or say once why frames travel instead."""
        self.close()
        if msg["size"] != self.frame_size:
            self._tell(f"batch frames travel over ZeroMQ: the replay server's frames are {msg['size']} pixels wide")
            return
        try:
            self.ring = SharedFrames(msg)
            self._tell("reading batch frames from the replay server's shared memory (only frame numbers cross ZeroMQ)")
        except SharedFramesError as exc:
            self._tell(f"batch frames travel over ZeroMQ: {exc}")

    def batches(self, msg: dict) -> Iterator[dict]:
        """A "batch" or "batch_shared" message as the learner's batches (ids, frames (B, 2S, H, W), actions,
        rewards, bootstraps, weights), checked now (ProtocolError for a malformed one) and produced one
        at a time. Shared frames are copied into one reused batch-sized buffer just before their batch
        is taken, so each copy is still in the cache when it trains; a batch is valid until the next.
        Batches torn by an overwrite are skipped (counted in `torn`); a message from a ring this
        learner does not map gives none."""
        n, s2, size = len(msg["ids"]), 2 * self.frame_stack, self.frame_size
        if n == 0 or n % self.batch_size or any(msg[k].shape != (n,) for k in PER_TRANSITION):
            raise ProtocolError(f"a batch of {n} transitions for batches of {self.batch_size}")
        if msg["t"] == "batch":
            if msg["frames"].shape != (n, s2, size, size) or msg["frames"].dtype != np.uint8:
                raise ProtocolError(f"batch frames have shape {msg['frames'].shape}, dtype {msg['frames'].dtype}")
        elif msg["frame_numbers"].shape != (n, s2) or msg["frame_numbers"].dtype != np.int64:
            raise ProtocolError(
                f"batch_shared frame_numbers are {msg['frame_numbers'].dtype} "
                f"{msg['frame_numbers'].shape}, expected int64 {(n, s2)}"
            )
        elif self.ring is None or msg["ring"] != self.ring.token:
            self.reattach = True
            return iter(())
        order = self.rng.permutation(n) if n > self.batch_size else None  # one batch: as it came, no copy
        return self._each(msg, n, order)

    def _each(self, msg: dict, n: int, order: np.ndarray | None) -> Iterator[dict]:
        for i in range(0, n, self.batch_size):
            part = slice(i, i + self.batch_size) if order is None else order[i : i + self.batch_size]
            batch = {k: msg[k][part] for k in PER_TRANSITION}
            if msg["t"] == "batch":
                batch["frames"] = msg["frames"][part]
            else:
                if self._out is None:  # reused: a fresh array per batch cost more in page faults than the copy
                    self._out = np.empty(
                        (self.batch_size, 2 * self.frame_stack, self.frame_size, self.frame_size), dtype=np.uint8
                    )
                if not self.ring.gather(msg["frame_numbers"][part], out=self._out):
                    self.torn += 1
                    continue
                batch["frames"] = self._out
            yield batch

    def _tell(self, text: str) -> None:
        if text != self._told:
            self._told = text
            self.log(text)

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None
