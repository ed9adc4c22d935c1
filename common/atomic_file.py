"""Atomic file writes: whoever reads the path sees the old file or the new one, never a torn one."""

from __future__ import annotations

import contextlib
import os
from typing import BinaryIO, Callable


def write_atomically(path: str, write: Callable[[BinaryIO], None]) -> None:
    """write(f) into path.tmp, fsync, rename over path, fsync the folder (so the rename survives a
    power loss). On any failure the .tmp is removed (a full disk is not made fuller) and the error
    re-raised; the previous file at path is untouched."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):  # not every platform can fsync a folder
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
