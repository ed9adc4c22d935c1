"""Pick the learner's torch device: CUDA, then Apple MPS, then CPU, unless one is asked for."""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """The requested device is not available here; one-line message."""


def pick_device(requested: str = "auto") -> torch.device:
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if requested == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if requested == "cuda" and not cuda:
        raise DeviceError("--device cuda was requested but this torch build sees no CUDA GPU")
    if requested == "mps" and not mps:
        raise DeviceError("--device mps was requested but Apple MPS is not available here")
    if requested not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unknown device {requested!r}: use auto, cpu, cuda or mps")
    return torch.device(requested)
