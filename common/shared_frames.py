"""The replay server's frame ring in shared memory, read directly by a learner on the same machine.

A batch of 32 stacks is 1.8 MB of frames; copying that into a ZeroMQ message and out again cost the
replay service most of its time. So on Linux the server keeps its frame ring in a memfd, and a learner
on the same machine maps it read-only (through /proc/<server pid>/fd/<fd>) and is sent only the global
numbers of each batch's frames, which it gathers itself: one copy, as an in-process buffer makes.

The ring is overwritten oldest first while the learner may be reading, so the header publishes how many
frames the server has begun writing (WRITING, raised before the bytes change). A frame numbered g is
intact if g >= WRITING - count when read after the gather; otherwise the batch is torn and dropped.
A forked snapshot writer shares the ring too (no copy-on-write here), so it saves frames oldest first
and publishes how far it got (SNAPSHOT); the server waits before overwriting a frame not yet saved,
which in practice never happens: the writer moves at disk speed, the actors at a few MB/s.
Both checks rely on the server's header store preceding its frame stores, and the learner's header
load following its copy, which x86 guarantees. Weakly ordered CPUs (ARM: Apple silicon, Graviton) do
not (`stores_in_order`), so there the ring is private memory: a learner takes its frames from the
messages, and a forked snapshot writer gets a copy-on-write image of the ring as it was at the fork,
consistent by construction with no guard to trust.
Elsewhere (no memfd, another machine, the header's token does not match) batches carry their frames.
"""

from __future__ import annotations

import mmap
import os
import platform
import time
import weakref

import numpy as np

X86 = {"x86_64", "amd64", "i386", "i686", "x86"}


def stores_in_order(machine: str | None = None) -> bool:
    """Does this CPU keep stores, and loads, in program order as the torn-frame check needs (x86: TSO)?"""
    return (machine or platform.machine()).lower() in X86


HEADER_BYTES = 4096  # frames start on a page boundary
TOKEN, WRITING, SNAPSHOT, ABANDONED = 0, 1, 2, 3  # int64 header words
NO_SNAPSHOT = np.iinfo(np.int64).max
SNAPSHOT_STALL_S = 30.0


class FrameRing:
    """The server's side: `count` frames of size x size uint8, shared where this platform has memfds and
    keeps stores in order (elsewhere private: the guards above would not hold)."""

    def __init__(self, count: int, size: int):
        self.count, self.size = count, size
        self.fd = -1
        nbytes = HEADER_BYTES + count * size * size
        memory = None
        if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd") and stores_in_order():
            try:
                fd = os.memfd_create("mario-apex-frames", os.MFD_CLOEXEC)
                os.ftruncate(fd, nbytes)  # pages are allocated when first written
                memory = mmap.mmap(fd, nbytes)
                self.fd = fd
            except OSError:
                memory = None
        if memory is None:
            memory = bytearray(nbytes)
        self._memory = memory
        self.header = np.frombuffer(memory, dtype=np.int64, count=HEADER_BYTES // 8)
        self.frames = np.frombuffer(memory, dtype=np.uint8, offset=HEADER_BYTES).reshape(count, size, size)
        self.header[TOKEN] = int.from_bytes(os.urandom(7), "little")  # tells this ring from any other
        self.header[SNAPSHOT] = NO_SNAPSHOT
        self.writer_pid: int | None = None
        # A dropped ring frees its memory too: the memfd's pages live as long as this fd stays open.
        self._finalizer = weakref.finalize(self, _release, memory, self.fd)

    def close(self) -> None:
        """Unmap the ring and close its memfd, so its memory goes (a 1M-transition buffer's is 8 GB).
        A learner that mapped it, or a forked snapshot writer, keeps its own map until done with it; views
        of `frames` kept elsewhere hold the map until they go. Idempotent; the ring is unusable after."""
        self.header = self.frames = self._memory = None  # this ring's views: the map closes if no others
        self.fd = -1
        self._finalizer()

    @property
    def shared(self) -> bool:
        return self.fd >= 0

    @property
    def token(self) -> int:
        return int(self.header[TOKEN])

    def describe(self) -> dict:
        """What a learner on this machine needs to map the ring (fd -1: not shared)."""
        return {"pid": os.getpid(), "fd": self.fd, "token": self.token, "frames": self.count, "size": self.size}

    def announce(self, written_upto: int) -> None:
        """Frames numbered below `written_upto` may be written from now on: call before writing them,
        after `wait_for_snapshot(written_upto - count)`."""
        self.header[WRITING] = written_upto

    # --- a forked snapshot writer reading the same memory ---------------------------------------
    def snapshot_begin(self, first: int) -> None:
        """Before forking a writer that will save frames numbered `first` onwards (shared rings only);
        set `writer_pid` once forked, so a writer that dies is not waited for."""
        self.writer_pid = None
        if self.shared:
            self.header[ABANDONED] = 0
            self.header[SNAPSHOT] = first

    def snapshot_saved(self, upto: int) -> None:
        """In the writer: frames numbered below `upto` are saved."""
        if not self.header[ABANDONED]:
            self.header[SNAPSHOT] = upto

    @property
    def snapshot_abandoned(self) -> bool:
        """In the writer: the server stopped waiting for it, so its frames may be torn."""
        return bool(self.header[ABANDONED])

    def snapshot_end(self) -> None:
        """The writer finished or died: nothing to wait for any more."""
        self.header[SNAPSHOT] = NO_SNAPSHOT

    def wait_for_snapshot(self, overwritten_below: int) -> None:
        """Block until a running snapshot writer has saved every frame numbered below this; gives up
        (ending the guard) if the writer makes no progress for SNAPSHOT_STALL_S."""
        saved, since = int(self.header[SNAPSHOT]), time.monotonic()
        while saved < overwritten_below:
            time.sleep(0.001)
            now_saved = int(self.header[SNAPSHOT])
            if self.writer_pid is not None and not _running(self.writer_pid):
                self.snapshot_end()  # killed before it could say so; the server reports the failure
                return
            if now_saved != saved:
                saved, since = now_saved, time.monotonic()
            elif time.monotonic() - since > SNAPSHOT_STALL_S:
                self.header[ABANDONED] = 1
                self.snapshot_end()
                return


def _release(memory: mmap.mmap | bytearray, fd: int) -> None:
    """A FrameRing's close (and finalizer): takes the memory, not the ring, so a dropped ring can be freed."""
    if isinstance(memory, mmap.mmap):
        try:
            memory.close()
        except BufferError:  # numpy views of it remain: it is unmapped when the last of them goes
            pass
    if fd >= 0:
        os.close(fd)


def _running(pid: int) -> bool:
    """Whether process pid exists and has not exited (a zombie has: it is the server's to reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


class SharedFramesError(OSError):
    """The replay server's frame ring cannot be mapped here (another machine, or not shared)."""


class SharedFrames:
    """The learner's side: a read-only map of a FrameRing, and the gather that replaces frame transfers."""

    def __init__(self, info: dict):
        if info["fd"] < 0:
            raise SharedFramesError("the replay server's frames are not in shared memory on this platform")
        path = f"/proc/{info['pid']}/fd/{info['fd']}"
        self.count, self.size, self.token = info["frames"], info["size"], info["token"]
        nbytes = HEADER_BYTES + self.count * self.size * self.size
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise SharedFramesError(
                f"cannot open {path} ({exc.strerror}): not on the replay server's machine?"
            ) from None
        try:
            if os.fstat(fd).st_size != nbytes:
                raise SharedFramesError(f"{path} is not the replay server's frame ring (size differs)")
            self._memory = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self.header = np.frombuffer(self._memory, dtype=np.int64, count=HEADER_BYTES // 8)
        self.frames = np.frombuffer(self._memory, dtype=np.uint8, offset=HEADER_BYTES).reshape(
            self.count, self.size, self.size
        )
        if int(self.header[TOKEN]) != self.token:
            self.close()
            raise SharedFramesError(f"{path} is not the replay server's frame ring (token differs)")

    def gather(self, numbers: np.ndarray, out: np.ndarray) -> bool:
        """Copy the frames with these global numbers (any shape) into out (that shape + (H, W)); False
        if the server overwrote any of them while they were read (the batch is then dropped)."""
        numbers = np.asarray(numbers, dtype=np.int64)
        if numbers.size == 0 or numbers.min() < 0:
            return False
        np.take(self.frames, numbers.ravel(), axis=0, mode="wrap", out=out.reshape(-1, self.size, self.size))
        written = int(self.header[WRITING])  # read after the copy, on purpose
        return written - self.count <= numbers.min() and numbers.max() < written

    def close(self) -> None:
        self.header = self.frames = None
        self._memory.close()
