"""The learner's side of batch delivery: asks the replay server for several batches per request, and
takes their frames from the server's shared frame ring when the learner runs on its machine (only
frame numbers then cross ZeroMQ), else from its own copy of that ring (a FrameMirror: each message
brings only the frames the copy lacks, so each frame crosses once per time it is written), else from
the message itself.

Small batches are fetched `transitions_per_request` transitions at a time, shuffled and split: each
batch is then a uniform subset of one stratified prioritized sample (the same P(i) and IS weights),
and ZeroMQ's per-message cost, which at batch 32 was as large as the sampling itself, is shared.
The learner and the replay-service benchmark's client both go through this, so the benchmark
measures the learner's own path.
"""

from __future__ import annotations

import os
import platform
from typing import Callable, Iterator

import numpy as np

from common.config import frames_per_message
from common.protocol import ProtocolError, encode
from common.shared_frames import SharedFrames, SharedFramesError, stores_in_order

PER_TRANSITION = ("ids", "actions", "rewards", "bootstraps", "weights")


def new_mirror_token() -> int:
    """A random nonzero 56-bit token naming one copy of the ring, as the replay server has filled it."""
    return int.from_bytes(os.urandom(7), "little") | 1


class FrameMirror:
    """The learner's copy of the replay server's frame ring (for a learner that cannot map it): frame g of
    ring `ring` lives in slot g % count, as on the server, and `held` says which frame each slot holds
    (g + 1; 0: none), so a frame is only ever read as the very one a batch names. Frames of a ring never change
    once written, so a held frame stays right until a newer one takes its slot. Its pages are taken as
    frames arrive: at most the server's ring, count x H x W bytes."""

    def __init__(self, ring: int, count: int, size: int):
        self.ring, self.count, self.size = ring, count, size
        self.frames = np.zeros((count, size, size), dtype=np.uint8)  # untouched pages cost no memory
        self.held = np.zeros(count, dtype=np.int64)

    def store(self, numbers: np.ndarray, frames: np.ndarray) -> None:
        slots = numbers % self.count
        self.frames[slots] = frames
        self.held[slots] = numbers + 1

    def holds(self, numbers: np.ndarray) -> bool:
        """Are all these frames here (numbers of any shape, >= 0)?"""
        return bool(np.array_equal(self.held[numbers % self.count], numbers + 1))

    def gather(self, numbers: np.ndarray, out: np.ndarray) -> bool:
        """Copy these frames (any shape) into out (that shape + (H, W)); False if any is not held."""
        if not self.holds(numbers):
            return False
        slots = (numbers % self.count).ravel()  # in range: "wrap" changes none, and copies 2.5x faster than "raise"
        np.take(self.frames, slots, axis=0, mode="wrap", out=out.reshape(-1, self.size, self.size))
        return True


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
        mirror: bool = False,
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
        # Without the shared ring: a copy of it, filled by "batch_mirror" replies (mirror=True), or frames
        # in every message ("batch").
        self.use_mirror = mirror
        self.awaiting_ring = False  # an attach_frames is unanswered: ask for plain batches until it is
        self.mirror: FrameMirror | None = None
        self.mirror_token = new_mirror_token()
        self.mirror_frames = 0  # frames received for the mirror (each one the server wrote, about once)
        self.mirror_restarts = 0  # fresh mirror tokens after the copy lacked a frame (a reply was lost)
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
        # A (re)connection may have lost replies the server counted as delivered: a new token makes it start
        # over with this mirror (the frames it holds stay, named by their numbers).
        self.mirror_token = new_mirror_token()
        self.awaiting_ring = self.use_shared
        return encode("attach_frames") if self.use_shared else None

    def sample_request(self, beta: float, ids=None, priorities=None) -> bytes:
        """A "sample" request, carrying the last batches' new priorities when given."""
        extra = {} if ids is None else {"ids": ids, "priorities": priorities}
        size = self.request_size
        if self.ring is None and self.travel_size < size:
            size = self.travel_size
            self._tell(
                f"asking for {size} transitions per request, not {self.request_size}: their frames can travel "
                f"in the messages (all of them in a new copy's first replies), and more would not fit in one "
                f"(max_message_bytes)"
            )
        if self.ring is None and self.use_mirror and not self.awaiting_ring:
            extra["mirror"] = self.mirror_token
        return encode("sample", batch_size=size, beta=beta, shared=self.ring is not None, **extra)

    def on_frame_ring(self, msg: dict) -> None:
        """The server's answer to attach_request: map its ring, or say once why frames travel instead."""
        self.close()
        self.awaiting_ring = False
        if msg["size"] != self.frame_size:
            self._tell(f"batch frames travel over ZeroMQ: the replay server's frames are {msg['size']} pixels wide")
            return
        try:
            self.ring = SharedFrames(msg)
            self.mirror = None  # the ring itself is here now
            self._tell("reading batch frames from the replay server's shared memory (only frame numbers cross ZeroMQ)")
        except SharedFramesError as exc:
            self._tell(f"batch frames travel over ZeroMQ: {exc}")

    def batches(self, msg: dict) -> Iterator[dict]:
        """A "batch", "batch_shared" or "batch_mirror" message as the learner's batches (ids, frames
        (B, 2S, H, W), actions, rewards, bootstraps, weights), checked now (ProtocolError for a malformed
        one) and produced one at a time. A batch_mirror's new frames go into the mirror now, before
        anything else is checked, as the server counts them delivered. Shared and mirrored frames are
        copied into one reused batch-sized buffer just before their batch is taken, so each copy is still
        in the cache when it trains; a batch is valid until the next. Batches torn by an overwrite are
        skipped (counted in `torn`); a message from a ring this learner does not map gives none."""
        n, s2, size = len(msg["ids"]), 2 * self.frame_stack, self.frame_size
        if msg["t"] == "batch_mirror" and self.ring is not None:
            return iter(())  # asked for before the shared ring was mapped (the request was on its way): stale
        if msg["t"] == "batch_mirror":
            try:
                self._store_mirrored(msg, n)
            except ProtocolError:
                self._restart_mirror(msg)
                raise
        if n == 0 or n % self.batch_size or any(msg[k].shape != (n,) for k in PER_TRANSITION):
            raise ProtocolError(f"a batch of {n} transitions for batches of {self.batch_size}")
        if msg["t"] == "batch":
            if msg["frames"].shape != (n, s2, size, size) or msg["frames"].dtype != np.uint8:
                raise ProtocolError(f"batch frames have shape {msg['frames'].shape}, dtype {msg['frames'].dtype}")
        elif msg["t"] == "batch_mirror":
            if not self.mirror.holds(msg["frame_numbers"]):
                self._restart_mirror(msg)
                raise ProtocolError(
                    "a batch_mirror names frames this learner's copy of the ring lacks (a reply was lost?): "
                    "the next requests start a fresh copy"
                )
        else:
            self._check_frame_numbers(msg, n)
            if self.ring is None or msg["ring"] != self.ring.token:
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
                source = self.mirror if msg["t"] == "batch_mirror" else self.ring
                if source is None or not source.gather(msg["frame_numbers"][part], out=self._out):
                    self.torn += 1
                    continue
                batch["frames"] = self._out
            yield batch

    def _check_frame_numbers(self, msg: dict, n: int) -> None:
        """A batch_shared's or batch_mirror's frame_numbers: int64 (n, 2S). Raises ProtocolError."""
        numbers, expected = msg["frame_numbers"], (n, 2 * self.frame_stack)
        if numbers.shape != expected or numbers.dtype != np.int64:
            raise ProtocolError(
                f"{msg['t']} frame_numbers are {numbers.dtype} {numbers.shape}, expected int64 {expected}"
            )

    def _restart_mirror(self, msg: dict) -> None:
        """A batch_mirror for this copy could not be used, but the server counts its frames delivered: the next
        requests start a fresh copy (a new token). Replies to an older token, still on their way, are only dropped."""
        if msg["mirror"] == self.mirror_token:
            self.mirror_token, self.mirror_restarts = new_mirror_token(), self.mirror_restarts + 1

    def _store_mirrored(self, msg: dict, n: int) -> None:
        """Check a batch_mirror's frame fields and store its new frames in the mirror (made, or made anew
        for another ring, here). Raises ProtocolError."""
        self._check_frame_numbers(msg, n)
        size = self.frame_size
        numbers, new, frames, count = msg["frame_numbers"], msg["new_numbers"], msg["frames"], msg["ring_frames"]
        if new.ndim != 1 or new.dtype != np.int64 or frames.dtype != np.uint8 or frames.shape != (len(new), size, size):
            raise ProtocolError(
                f"batch_mirror sends frames {frames.dtype} {frames.shape} numbered {new.dtype} {new.shape}, "
                f"expected uint8 (k, {size}, {size}) and int64 (k,)"
            )
        if count < 1 or len(new) > numbers.size:
            raise ProtocolError(
                f"batch_mirror: {len(new)} new frames for {numbers.size} frame numbers, ring of {count}"
            )
        for name, values in (("frame_numbers", numbers), ("new_numbers", new)):
            if values.size and (values.min() < 0 or values.max() - values.min() >= count):
                raise ProtocolError(
                    f"batch_mirror {name} are not frames of one ring of {count} (negative or too far apart)"
                )
        if len(np.unique(new)) != len(new):
            raise ProtocolError("batch_mirror sends a frame twice")
        if self.mirror is None or self.mirror.ring != msg["ring"] or self.mirror.count != count:
            self.mirror = None  # another ring (a restarted replay server): its frames are not these
            try:
                self.mirror = FrameMirror(msg["ring"], count, size)
            except (MemoryError, ValueError):  # ValueError: numpy's "array is too big"
                self.use_mirror = False
                self._tell(
                    f"batch frames travel in every message: no memory here for a copy of the replay server's "
                    f"frame ring ({count:,} frames, {count * size * size / 2**30:.1f} GiB)"
                )
                raise ProtocolError("no memory for a copy of the frame ring") from None
            self._tell(
                f"keeping a copy of the replay server's frame ring (up to {count:,} frames, "
                f"{count * size * size / 2**30:.2f} GiB): each frame crosses the network once per time it is written"
            )
        self.mirror.store(new, frames)
        self.mirror_frames += len(new)

    def _tell(self, text: str) -> None:
        if text != self._told:
            self._told = text
            self.log(text)

    def close(self) -> None:
        """Unmap the shared ring (the mirror stays: its frames are still good, named by ring and number)."""
        if self.ring is not None:
            self.ring.close()
            self.ring = None
