"""The level curriculum: play a list of levels in order, moving on once the current one is learned.

"Learned" means the average reward of the actor's last `window` training episodes on the level
reached `threshold` (the original trainer's later version offered the same). Each actor keeps its
own curriculum; evaluation episodes do not count.
"""

from __future__ import annotations

from collections import deque

from actor.envs import LevelSampler


class Curriculum:
    def __init__(self, levels: LevelSampler, threshold: float, window: int):
        self.levels, self.threshold = levels, threshold
        self.recent: deque[float] = deque(maxlen=window)

    def on_episode(self, reward: float) -> str | None:
        """Record a finished training episode; returns a message when the actor moves to the next level."""
        self.recent.append(reward)
        if len(self.recent) < self.recent.maxlen:
            return None
        average = sum(self.recent) / len(self.recent)
        if average < self.threshold:
            return None
        previous = self.levels.level
        if not self.levels.advance():
            return None
        self.recent.clear()
        return (
            f"curriculum: average reward {average:.2f} over the last {self.recent.maxlen} episodes on "
            f"{previous} passed {self.threshold:g}; moving on to {self.levels.level}"
        )
