"""The launcher's terminal: one writer for the status display and every process's log lines.

On a terminal the status is a live tqdm bar (a real progress bar with ETA when --max-steps is
set); otherwise (a pipe, a log file, CI) a plain status line every PLAIN_EVERY_S seconds.
Role processes send their log lines to the launcher as reports, so nothing draws over the bar.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from launcher.status import RunStatus

PLAIN_EVERY_S = 5.0


class Console:
    def __init__(self, max_steps: int, interactive: bool | None = None):
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self._bar = None
        self._last_plain = 0.0
        if self.interactive:
            fmt = (
                "{l_bar}{bar:20}| {n_fmt}/{total_fmt} steps [{elapsed}<{remaining}{postfix}]"
                if max_steps
                else "{n_fmt} steps [{elapsed}, {rate_fmt}{postfix}]"
            )
            self._bar = tqdm(
                total=max_steps or None,
                unit="step",
                dynamic_ncols=True,
                bar_format=fmt,
                smoothing=0.05,
                file=sys.stdout,
            )

    def say(self, text: str, error: bool = False) -> None:
        """A log line, printed above the live bar."""
        stream = sys.stderr if error else sys.stdout
        if self._bar is not None:
            self._bar.write(text, file=stream)
        else:
            print(text, file=stream, flush=True)

    def update(self, status: RunStatus, force: bool = False) -> None:
        if self._bar is not None:
            if self._bar.total:  # --max-steps counts this session's steps, as the bar must
                self._bar.n = min(status.session_steps, self._bar.total)
            else:
                self._bar.n = status.env_steps
            self._bar.set_postfix_str(" | ".join(status.fields()), refresh=False)
            self._bar.refresh()
            return
        now = time.monotonic()
        if force or now - self._last_plain >= PLAIN_EVERY_S:
            self._last_plain = now
            print(status.line(), flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
