"""log.txt: one line per episode, written by the launcher alone (so lines from several actors
never interleave, and episode numbers run on across resumed sessions)."""

from __future__ import annotations

import re
from datetime import datetime

from common.log_limit import LogLimit
from common.records import CheckpointCounters, EpisodeReport, EpisodeResult, EvalResult

_EVAL_NUMBER = re.compile(r"^\[[^\]]+\] Eval (\d+),")


class EpisodeLog:
    def __init__(self, path: str):
        self.path = path
        self._failures, self._failure_log = 0, LogLimit()  # failed writes (a full disk, say)

    def write(self, number: int, episode: EpisodeReport) -> str | None:
        """A training episode's line; returns an error message when writing fails: the first time, then at
        most once per 30 s with the count (a lost line is never silent for long)."""
        return self._append(
            f"Episode {number}, {self._common(episode)}, Epsilon: {episode.epsilon:.3f}{self._end(episode)}"
        )

    def write_resumed(self, checkpoint: str, counters: CheckpointCounters) -> str | None:
        """The line that starts a resumed session. Episodes logged after that checkpoint was saved (a crash, say)
        are not in it, so their numbers come again after this line."""
        return self._append(
            f"Resumed from {checkpoint}: episode {counters.episodes}, "
            f"{counters.env_steps} env steps (numbering goes on from there)"
        )

    def last_eval_number(self) -> int:
        """The number of the last evaluation already in the file (0 if none or unreadable): a resumed run's
        evaluations go on from it."""
        last = 0
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    match = _EVAL_NUMBER.match(line)
                    if match:
                        last = int(match[1])
        except OSError:
            pass
        return last

    def write_eval(self, number: int, result: EvalResult, env_steps: int) -> str | None:
        """A greedy evaluation episode's line, marked "Eval", with the run's env steps when it was played."""
        return self._append(f"Eval {number}, {self._common(result)}, Env steps: {env_steps}{self._end(result)}")

    @staticmethod
    def _common(e: EpisodeResult) -> str:
        return (
            f"Reward: {e.reward:.2f}, Actor: {e.actor}, Steps: {e.steps}, X: {e.x_pos}, "
            f"Flag: {'yes' if e.flag else 'no'}"
        )

    @staticmethod
    def _end(e: EpisodeResult) -> str:
        """Last on the line, so that parsers of the lines before it still read them."""
        return f", End: {e.ended}" if e.ended else ""

    def _append(self, text: str) -> str | None:
        line = f"[{datetime.now().strftime('%Y-%m-%d %H:%M:%S')}] {text}\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as exc:
            self._failures += 1
            if self._failure_log.due():
                count = f" ({self._failures} failed writes so far)" if self._failures > 1 else ""
                return f"could not write {self.path}: {exc.strerror}; training goes on{count}"
        return None
