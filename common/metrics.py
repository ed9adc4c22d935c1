"""TensorBoard scalars that never take a process down.

TensorBoard writes from a background thread; on a full disk that thread dies and every later
call re-raises its error. Here the first failure is reported once, metrics stop, training goes on.
"""

from __future__ import annotations

from torch.utils.tensorboard import SummaryWriter


class Metrics:
    def __init__(self, run_dir: str, suffix: str, log):
        self._log = log
        self._writer: SummaryWriter | None = None
        try:
            self._writer = SummaryWriter(run_dir, filename_suffix=suffix)
        except Exception as exc:  # e.g. the disk is already full
            self._fail(exc)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is None:
            return
        try:
            self._writer.add_scalar(tag, value, step)
        except Exception as exc:  # the writer thread's OSError, re-raised here
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        self._log(
            f"TensorBoard events could not be written ({getattr(exc, 'strerror', None) or exc}); "
            "metrics stop, training goes on"
        )
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:
                pass

    def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception as exc:
                self._fail(exc)
