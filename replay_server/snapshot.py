"""Replay snapshots: the buffer's live contents in one uncompressed .npz file (no pickles).

Writing 100 k transitions (about 750 MB) takes seconds, so the server forks and the child writes
its copy-on-write view of the buffer while the parent goes on serving actors: the snapshot is the
buffer at the instant of the fork. The frame ring is shared memory, not copy-on-write, so the child
saves frames last, oldest first, and tells the ring how far it got; the server never overwrites a
frame it has not saved yet (common/shared_frames.py). Files are written to a temporary name,
fsynced and renamed, so a crash mid-write never damages an existing snapshot.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import zipfile

import numpy as np

from common.atomic_file import write_atomically
from replay_server.buffer import ChunkError, PrioritizedReplay


class SnapshotError(ValueError):
    """A replay snapshot that cannot be read or does not fit; one-line message naming the file."""


FRAMES_PER_WRITE = 1024  # about 7 MB: how often the writer tells the ring how far it got


def write_snapshot(buffer: PrioritizedReplay, counters: dict, path: str) -> None:
    """An .npz that np.load reads as usual (what np.savez writes), frames written last and in pieces."""
    arrays = buffer.state_arrays()
    arrays["counters"] = np.array(json.dumps(counters))  # a unicode array: no pickle needed
    frame_views = [(name, arrays.pop(name)) for name in ("frames", "frames_wrapped")]  # oldest first

    def write(f) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, array in arrays.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as out:
                    np.lib.format.write_array(out, np.asanyarray(array), allow_pickle=False)
            saved = buffer.oldest_frame()
            for name, frames in frame_views:
                with archive.open(f"{name}.npy", "w", force_zip64=True) as out:
                    np.lib.format.write_array_header_1_0(out, np.lib.format.header_data_from_array_1_0(frames))
                    for start in range(0, len(frames), FRAMES_PER_WRITE):
                        piece = frames[start : start + FRAMES_PER_WRITE]
                        out.write(memoryview(np.ascontiguousarray(piece)).cast("B"))
                        saved += len(piece)
                        buffer.ring.snapshot_saved(saved)
        if buffer.ring.snapshot_abandoned:
            raise OSError("the replay server stopped waiting for this snapshot; its frames may be torn")

    write_atomically(path, write)


def read_snapshot(path: str, buffer: PrioritizedReplay) -> dict:
    """Load a snapshot into an empty buffer; returns the server counters saved with it."""
    try:
        with np.load(path, allow_pickle=False) as data:
            buffer.load_state_arrays(data)
            counters = json.loads(str(data["counters"]))
    except FileNotFoundError:
        raise SnapshotError(f"{path}: no such file") from None
    except ChunkError as exc:
        raise SnapshotError(f"{path}: {exc}") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise SnapshotError(f"{path}: not a readable replay snapshot ({type(exc).__name__})") from None
    if not isinstance(counters, dict):
        raise SnapshotError(f"{path}: replay snapshot counters are damaged")
    return counters


def start_snapshot(buffer: PrioritizedReplay, counters: dict, path: str) -> int | None:
    """Write a snapshot in a forked child; returns its pid (None: written synchronously, no fork here)."""
    if not hasattr(os, "fork"):
        write_snapshot(buffer, counters, path)
        return None
    buffer.ring.snapshot_begin(buffer.oldest_frame())
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        buffer.ring.snapshot_end()
        raise
    if pid == 0:  # the child: touch only numpy and files, never the sockets
        status = 1
        try:
            _die_with(parent)
            write_snapshot(buffer, counters, path)
            status = 0
        finally:
            buffer.ring.snapshot_end()  # (the server also ends it when it sees this child exit)
            os._exit(status)
    buffer.ring.writer_pid = pid
    return pid


PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    """The writer goes when its server goes, even by SIGKILL: the launcher stops only the processes it
    started, so an orphaned writer would outlive the run, still writing (Linux; elsewhere it finishes)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the server died before the line above took effect
        os._exit(1)
