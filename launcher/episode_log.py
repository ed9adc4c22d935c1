"""log.txt: one line per episode, written by the launcher alone (so lines from several actors
never interleave, and episode numbers run on across resumed sessions)."""
from __future__ import annotations

import time
from datetime import datetime

FAILURE_LOG_S = 30.0      # repeated failed writes (a full disk): one line per this long, with a count


class EpisodeLog:
    def __init__(self, path: str):
        self.path = path
        self._failures, self._failure_logged = 0, -FAILURE_LOG_S

    def write(self, number: int, episode: dict) -> str | None:
        """A training episode's line; returns an error message when writing fails: the first time, then at
        most once per FAILURE_LOG_S with the count (a lost line is never silent for long)."""
        return self._append(f"Episode {number}, {self._common(episode)}, Epsilon: {episode['epsilon']:.3f}")

    def write_eval(self, number: int, episode: dict) -> str | None:
        """A greedy evaluation episode's line, marked "Eval", with the env steps trained so far."""
        return self._append(f"Eval {number}, {self._common(episode)}, Env steps: {episode['env_steps']}")

    @staticmethod
    def _common(e: dict) -> str:
        return (f"Reward: {e['reward']:.2f}, Actor: {e['actor']}, Steps: {e['steps']}, X: {e['x_pos']}, "
                f"Flag: {'yes' if e['flag'] else 'no'}")

    def _append(self, text: str) -> str | None:
        line = f"[{datetime.now().strftime('%Y-%m-%d %H:%M:%S')}] {text}\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as exc:
            self._failures += 1
            now = time.monotonic()
            if self._failures == 1 or now - self._failure_logged >= FAILURE_LOG_S:
                self._failure_logged = now
                count = f" ({self._failures} failed writes so far)" if self._failures > 1 else ""
                return f"could not write {self.path}: {exc.strerror}; training goes on{count}"
        return None
