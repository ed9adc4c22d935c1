"""log.txt: one line per episode, written by the launcher alone (so lines from several actors
never interleave, and episode numbers run on across resumed sessions)."""
from __future__ import annotations

from datetime import datetime


class EpisodeLog:
    def __init__(self, path: str):
        self.path = path
        self._failed = False

    def write(self, number: int, episode: dict) -> str | None:
        """Append one line; returns an error message the first time writing fails, else None."""
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        line = (f"[{stamp}] Episode {number}, Reward: {episode['reward']:.2f}, Actor: {episode['actor']}, "
                f"Steps: {episode['steps']}, X: {episode['x_pos']}, Flag: {'yes' if episode['flag'] else 'no'}, "
                f"Epsilon: {episode['epsilon']:.3f}\n")
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                return f"could not write {self.path}: {exc.strerror}; training goes on"
        return None
