"""Replay snapshots: the buffer's live contents in one uncompressed .npz file (no pickles).

Writing 100 k transitions (about 750 MB) takes seconds, so the server forks and the child writes
its copy-on-write view of the buffer while the parent goes on serving actors: the snapshot is the
buffer at the instant of the fork. Files are written to a temporary name, fsynced and renamed, so
a crash mid-write never damages an existing snapshot.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from common.atomic_file import write_atomically
from replay_server.buffer import ChunkError, PrioritizedReplay


class SnapshotError(ValueError):
    """A replay snapshot that cannot be read or does not fit; one-line message naming the file."""


def write_snapshot(buffer: PrioritizedReplay, counters: dict, path: str) -> None:
    arrays = buffer.state_arrays()
    arrays["counters"] = np.array(json.dumps(counters))          # a unicode array: no pickle needed
    write_atomically(path, lambda f: np.savez(f, **arrays))


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
    pid = os.fork()
    if pid == 0:                     # the child: touch only numpy and files, never the sockets
        status = 1
        try:
            write_snapshot(buffer, counters, path)
            status = 0
        finally:
            os._exit(status)
    return pid
