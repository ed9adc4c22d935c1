"""Names of files in a run folder that one role writes and another reads or cleans up, so both agree."""

from __future__ import annotations

import re

SNAPSHOT_FILE = re.compile(r"^checkpoint(_final)?-\d{1,20}\.replay\.npz(\.tmp)?$")
"""A replay snapshot: the learner names it (snapshot_name) and removes those no checkpoint names; the replay
server writes no other name (group 2: a partial one, still being written)."""


def snapshot_name(checkpoint_base: str, stamp: int) -> str:
    """checkpoint_base: checkpoint or checkpoint_final; stamp: a unique number (the time in ns)."""
    return f"{checkpoint_base}-{stamp}.replay.npz"


FRAME_FILE = re.compile(r"^replay-frames-(\d+)-(\d+)\.npy(\.tmp)?$")
"""A replay frame file (replay_server/snapshot.py writes them; group 3: a partial one, still being written)."""

Segment = tuple[int, int]
"""A frame file's global frame numbers: first, end (exclusive)."""


def frame_file_name(segment: Segment) -> str:
    return f"replay-frames-{segment[0]}-{segment[1]}.npy"
