"""Replay snapshots: the buffer's state in a small .npz, its frames in frame files written once each (no pickles).

A frame is stored once and never changes, so the frames live in files of their own beside the snapshots,
`replay-frames-<first>-<end>.npy` (global frame numbers first..end-1), written once and shared: each
snapshot writes one file with the frames stored since the run's previous snapshot and names the files that
hold its live frames. So a checkpoint writes what changed (new frames, and the transitions and
priorities, about 50 bytes per stored transition), not the whole buffer, and a run folder holds one copy of
the replay memory however many snapshots name it. Files no snapshot names any more are removed
(`remove_unused_frame_files`). Snapshots from before this layout (frames inside the .npz) still load.

Writing frames takes seconds, so the server forks and the child writes its copy-on-write view of the
buffer while the parent goes on serving actors: the snapshot is the buffer at the instant of the fork.
The frame ring is shared memory, not copy-on-write, so the child saves frames oldest first and tells
the ring how far it got; the server never overwrites a frame it has not saved yet
(common/shared_frames.py). Files are written to a temporary name, fsynced and renamed, so a crash
mid-write never damages an existing snapshot or frame file.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import zipfile

import numpy as np

from common.atomic_file import write_atomically
from common.run_files import FRAME_FILE, Segment, frame_file_name
from replay_server.buffer import ChunkError, PrioritizedReplay


class SnapshotError(ValueError):
    """A replay snapshot that cannot be read or does not fit; one-line message naming the file."""


FRAMES_PER_WRITE = 1024  # about 7 MB: how often the writer tells the ring how far it got


def frame_plan(buffer: PrioritizedReplay, saved: list[Segment]) -> list[Segment]:
    """The frame files a snapshot of the buffer now names: those of `saved` (already in the folder) that hold
    live frames, then one for the frames stored since, which the snapshot writes (the last, if not in saved)."""
    oldest, head = buffer.oldest_frame(), buffer.frames_written
    live = [segment for segment in saved if segment[1] > oldest]
    joined = all(end == first for (_, end), (first, _) in zip(live, live[1:]))
    if not (live and joined and live[0][0] <= oldest and live[-1][1] <= head):
        live = []  # nothing usable saved (a fresh folder, or a buffer that is not the one saved)
    first = live[-1][1] if live else oldest
    return live + [(first, head)] if first < head else live


def write_snapshot(buffer: PrioritizedReplay, counters: dict, path: str, saved: list[Segment] = ()) -> list[Segment]:
    """Write the snapshot at `path` and the frame file it needs beside it; `saved`: the frame files already
    there (from this folder's earlier snapshots). Returns the frame files the snapshot names."""
    plan = frame_plan(buffer, list(saved))
    new = _new_frame_file(plan, saved)
    if new is not None:
        _write_frames(buffer, new, os.path.join(os.path.dirname(path), frame_file_name(new)))
    arrays = buffer.state_arrays()
    del arrays["frames"], arrays["frames_wrapped"]  # (views: nothing copied) they are in the frame files
    arrays["frame_files"] = np.array(plan, dtype=np.int64).reshape(-1, 2)
    arrays["counters"] = np.array(json.dumps(counters))  # a unicode array: no pickle needed
    write_atomically(path, lambda f: np.savez(f, **arrays))
    return plan


def _new_frame_file(plan: list[Segment], saved: list[Segment]) -> Segment | None:
    """The frame file a snapshot with this plan writes: its last, unless an earlier snapshot wrote it."""
    return plan[-1] if plan and plan[-1] not in saved else None


def _write_frames(buffer: PrioritizedReplay, segment: Segment, path: str) -> None:
    """One .npy of the frames numbered segment[0]..segment[1]-1, in pieces, oldest first, telling the ring.
    Never over an existing frame file: one of that name that no earlier snapshot of this buffer wrote belongs
    to another history of the run (a resume from an older checkpoint), and a snapshot there names it."""
    first, end = segment
    if os.path.exists(path):
        raise FileExistsError(errno.EEXIST, "a frame file of that name exists (another snapshot names it)", path)
    header = {"descr": "|u1", "fortran_order": False, "shape": (end - first, buffer.frame_size, buffer.frame_size)}

    def write(out) -> None:
        np.lib.format.write_array_header_1_0(out, header)
        saved = first
        for frames in buffer.frame_views(first, end):
            for start in range(0, len(frames), FRAMES_PER_WRITE):
                piece = frames[start : start + FRAMES_PER_WRITE]
                out.write(memoryview(np.ascontiguousarray(piece)).cast("B"))
                saved += len(piece)
                buffer.ring.snapshot_saved(saved)
        if buffer.ring.snapshot_abandoned:
            raise OSError("the replay server stopped waiting for this snapshot; its frames may be torn")

    write_atomically(path, write)


def read_snapshot(path: str, buffer: PrioritizedReplay) -> dict:
    """Load a snapshot, and the frames of the frame files it names, into an empty buffer; returns the server
    counters saved with it."""
    folder = os.path.dirname(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            parts = _frame_parts(buffer, data, folder) if "frame_files" in data else None  # else frames inside
            buffer.load_state_arrays(data, parts)
            counters = json.loads(str(data["counters"]))
    except FileNotFoundError as exc:
        missing = os.path.basename(exc.filename or path)
        raise SnapshotError(
            f"{path}: no such file"
            if missing == os.path.basename(path)
            else f"{path}: its frame file {missing} is missing"
        ) from None
    except ChunkError as exc:
        raise SnapshotError(f"{path}: {exc}") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise SnapshotError(f"{path}: not a readable replay snapshot ({type(exc).__name__})") from None
    if not isinstance(counters, dict):
        raise SnapshotError(f"{path}: replay snapshot counters are damaged")
    return counters


def _frame_parts(buffer: PrioritizedReplay, data, folder: str) -> list[np.ndarray]:
    """The live frames, oldest first, as views of the (memory-mapped) frame files a snapshot names."""
    _, f_head, _, f_live = (int(v) for v in data["heads"])
    number, parts = f_head - f_live, []
    for first, end in _segments(data):
        first, end = int(first), int(end)
        name = frame_file_name((first, end))
        frames = np.load(os.path.join(folder, name), mmap_mode="r", allow_pickle=False)
        if frames.dtype != np.uint8 or frames.shape != (end - first, buffer.frame_size, buffer.frame_size):
            raise ChunkError(f"frame file {name} does not hold the frames its name says")
        if not first <= number < end:
            raise ChunkError(f"frame file {name} does not follow on from frame {number}")
        parts.append(frames[number - first :])
        number = end
    if number != f_head:
        raise ChunkError(f"its frame files end at frame {number}, the buffer at {f_head}")
    return parts


def check_snapshot(path: str, capacity: int, frame_size: int, frame_stack: int, num_actions: int) -> None:
    """A cheap look before a resume: the snapshot's header fits a buffer of this shape and the frame files it
    names are there (the frames themselves are not read). Raises SnapshotError."""
    try:
        with np.load(path, allow_pickle=False) as data:
            shape = [int(v) for v in data["shape"]]  # PrioritizedReplay.state_arrays's layout
    except FileNotFoundError:
        raise SnapshotError(f"{path}: the replay snapshot this checkpoint names is missing") from None
    except KeyError:
        raise SnapshotError(f"{path}: not a mario-apex replay snapshot (no shape header)") from None
    except (ValueError, zipfile.BadZipFile, EOFError):
        raise SnapshotError(f"{path}: the replay snapshot is damaged or truncated") from None
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot read the replay snapshot ({exc.strerror or exc})") from None
    if shape[0] != capacity or shape[2:] != [frame_size, frame_stack, num_actions]:
        raise SnapshotError(f"{path}: replay snapshot does not fit this run's replay capacity or frames")
    for segment in frame_files_named(path):
        name = frame_file_name(segment)
        if not os.path.exists(os.path.join(os.path.dirname(path), name)):
            raise SnapshotError(f"{path}: its frame file {name} is missing")


def frame_files_named(snapshot: str) -> list[Segment]:
    """The frame files a snapshot names ([] for one with its frames inside). Raises SnapshotError."""
    try:
        with np.load(snapshot, allow_pickle=False) as data:
            if "frame_files" not in data:
                return []
            return [(int(a), int(b)) for a, b in _segments(data)]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise SnapshotError(f"{snapshot}: cannot read which frame files it names ({exc})") from None


def _segments(data) -> np.ndarray:
    segments = data["frame_files"]
    if segments.dtype != np.int64 or segments.ndim != 2 or segments.shape[1] != 2:
        raise ValueError("its frame_files are not (first, end) pairs")
    return segments


def remove_unused_frame_files(folder: str, keep: list[Segment] = ()) -> int:
    """Remove the frame files (and partial ones) in `folder` that no snapshot there names, except `keep`;
    call only while no snapshot is being written there. A snapshot that cannot be read might name any of
    them, so then none is removed (SnapshotError). Returns how many were removed."""
    names = os.listdir(folder)
    used = {frame_file_name(segment) for segment in keep}
    for name in names:
        if name.endswith(".replay.npz"):
            try:
                used.update(frame_file_name(segment) for segment in frame_files_named(os.path.join(folder, name)))
            except SnapshotError:
                if os.path.exists(os.path.join(folder, name)):  # not one deleted since the listing
                    raise
    removed = 0
    for name in names:
        if FRAME_FILE.match(name) and name not in used:
            try:
                os.remove(os.path.join(folder, name))
                removed += 1
            except OSError:
                pass
    return removed


def start_snapshot(buffer: PrioritizedReplay, counters: dict, path: str, saved: list[Segment] = ()) -> int | None:
    """Write a snapshot (as write_snapshot) in a forked child; returns its pid (None: written synchronously,
    no fork here). The snapshot names the frame files frame_plan(buffer, saved) gives now."""
    if not hasattr(os, "fork"):
        try:
            write_snapshot(buffer, counters, path, saved)
        finally:
            buffer.ring.snapshot_end()  # _write_frames told the ring how far it got: nothing waits now
        return None
    new = _new_frame_file(frame_plan(buffer, list(saved)), saved)
    buffer.ring.snapshot_begin(buffer.frames_written if new is None else new[0])  # older frames are on disk
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
            write_snapshot(buffer, counters, path, saved)
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
