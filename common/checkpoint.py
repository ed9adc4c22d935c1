"""The checkpoint file format, shared by the learner (which writes it) and anyone who plays it.

A checkpoint is one dict of tensors and plain values, so it loads with
`torch.load(..., weights_only=True)`: nothing in it is unpickled as arbitrary objects.
"""

from __future__ import annotations


import io

import torch

from common.atomic_file import write_atomically

CHECKPOINT_FORMAT = "mario-apex-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the reason."""


def save_checkpoint(state: dict, path: str) -> None:
    """Write atomically; a crash mid-save keeps the previous checkpoint.

    Serialised in memory first (tens of MB): torch.save writing to a full disk fails with an
    opaque RuntimeError, a plain file write with OSError "No space left on device"."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}, buffer)
    write_atomically(path, lambda f: f.write(buffer.getbuffer()))


def load_checkpoint(path: str) -> dict:
    """torch.load with weights_only=True plus a format check. Raises CheckpointError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file") from None
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({_why_unreadable(path, exc)})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a mario-apex checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')}, expected {CHECKPOINT_VERSION}")
    return state


def _why_unreadable(path: str, exc: Exception) -> str:
    """What is wrong with a file torch.load refused, in the user's terms (not torch's exception)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as error:
        return error.strerror or str(error)
    if not head:
        return "the file is empty"
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        return "not a torch file"
    if "Weights only load failed" in str(exc):
        return "it holds Python objects besides tensors and plain values, refused as loading them could run code"
    return "damaged or truncated"
