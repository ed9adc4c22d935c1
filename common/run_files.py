"""Names of files in a run folder that one role writes and another reads or cleans up, so both agree."""

from __future__ import annotations

import re

FRAME_FILE = re.compile(r"^replay-frames-(\d+)-(\d+)\.npy(\.tmp)?$")
"""A replay frame file (replay_server/snapshot.py writes them; group 3: a partial one, still being written)."""

Segment = tuple[int, int]
"""A frame file's global frame numbers: first, end (exclusive)."""


def frame_file_name(segment: Segment) -> str:
    return f"replay-frames-{segment[0]}-{segment[1]}.npy"
