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

from typing import Callable

import numpy as np

from common.protocol import ProtocolError, encode
from common.shared_frames import SharedFrames, SharedFramesError

PER_TRANSITION = ("ids", "actions", "rewards", "bootstraps", "weights")


class ReplayBatches:
    def __init__(self, batch_size: int, per_request: int, frame_stack: int, frame_size: int, use_shared: bool,
                 log: Callable[[str], None], seed: int = 0):
        self.batch_size = batch_size
        self.request_size = batch_size * max(1, per_request // batch_size)    # whole batches
        self.frame_stack, self.frame_size = frame_stack, frame_size
        self.rng = np.random.default_rng(seed)
        self.use_shared = use_shared      # the replay server is on this machine (ipc link) and allowed
        self.log = log
        self.ring: SharedFrames | None = None
        self.torn = 0                     # batches dropped because the server overwrote their frames meanwhile
        self.reattach = False             # a batch named a ring we do not map: ask again
        self._told: str | None = None
        self._out: dict[tuple, np.ndarray] = {}

    def attach_request(self) -> bytes | None:
        """After each (re)connect to a replay server (a restarted one has a new ring): the question to send."""
        self.close()
        self.reattach = False
        return encode("attach_frames") if self.use_shared else None

    def sample_request(self, beta: float, ids=None, priorities=None) -> bytes:
        """A "sample" request, carrying the last batches' new priorities when given."""
        extra = {} if ids is None else {"ids": ids, "priorities": priorities}
        return encode("sample", batch_size=self.request_size, beta=beta, shared=self.ring is not None, **extra)

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

    def batches(self, msg: dict) -> list[dict]:
        """A "batch" or "batch_shared" message as the learner's batches (ids, frames (B, 2S, H, W), actions,
        rewards, bootstraps, weights); [] to drop it (torn by an overwrite, or from a ring this learner
        does not map). Raises ProtocolError for a malformed one. Shared frames are valid until the next
        call (their buffer is reused)."""
        n, s2, size = len(msg["ids"]), 2 * self.frame_stack, self.frame_size
        if n == 0 or n % self.batch_size or any(msg[k].shape != (n,) for k in PER_TRANSITION):
            raise ProtocolError(f"a batch of {n} transitions for batches of {self.batch_size}")
        order = self.rng.permutation(n) if n > self.batch_size else slice(None)
        fields = {k: msg[k][order] for k in PER_TRANSITION}
        if msg["t"] == "batch":
            if msg["frames"].shape != (n, s2, size, size) or msg["frames"].dtype != np.uint8:
                raise ProtocolError(f"batch frames have shape {msg['frames'].shape}, dtype {msg['frames'].dtype}")
            frames = msg["frames"][order]
        else:
            if msg["frame_numbers"].shape != (n, s2) or msg["frame_numbers"].dtype != np.int64:
                raise ProtocolError(f"batch_shared frame_numbers are {msg['frame_numbers'].dtype} "
                                    f"{msg['frame_numbers'].shape}, expected int64 {(n, s2)}")
            if self.ring is None or msg["ring"] != self.ring.token:
                self.reattach = True
                return []
            frames = self._out.get(msg["frame_numbers"].shape)
            if frames is None:       # reused: a fresh 7 MB array per request cost more in page faults than the copy
                frames = self._out[msg["frame_numbers"].shape] = np.empty((n, s2, size, size), dtype=np.uint8)
            if not self.ring.gather(msg["frame_numbers"][order], out=frames):   # shuffled before the copy
                self.torn += 1
                return []
        return [{"frames": frames[i:i + self.batch_size], **{k: v[i:i + self.batch_size] for k, v in fields.items()}}
                for i in range(0, n, self.batch_size)]

    def _tell(self, text: str) -> None:
        if text != self._told:
            self._told = text
            self.log(text)

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None
