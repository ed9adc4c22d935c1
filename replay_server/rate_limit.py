"""Replay rate limiting, as in DeepMind's Reverb: sampling waits for a minimum fill, then holds a
samples-per-insert ratio within a tolerance, both ways:

- a learner ahead of the ratio waits for the actors (it cannot overfit a slowly filling buffer);
- actors ahead of it wait for the learner (`pin_replay_ratio`), so a learning curve over env steps
  is the same on a busy machine as on a quiet one: load changes the wall time, not the curve.

Inserts count from the moment sampling became possible (the minimum fill, or a restored buffer), so
neither side starts with credit: the learner does not binge on the warm-up data, and the actors are
not held back while the learner catches up with it.
"""

from __future__ import annotations


class RateLimiter:
    def __init__(self, min_size: int, samples_per_insert: float, tolerance: float, pin_actors: bool):
        self.min_size = max(min_size, 1)
        self.samples_per_insert = samples_per_insert
        self.tolerance = tolerance
        self.pin_actors = pin_actors and samples_per_insert > 0
        self.origin: int | None = None  # inserts counted when sampling became possible
        self.sampled = 0  # transitions sampled since then

    def observe(self, size: int, inserted: int) -> None:
        """Start the ratio's count once the buffer first holds min_size transitions."""
        if self.origin is None and size >= self.min_size:
            self.origin = inserted

    def _diff(self, inserted: int) -> float:
        """Samples the ratio allows minus those taken (positive: the learner is behind)."""
        return (inserted - self.origin) * self.samples_per_insert - self.sampled

    def can_sample(self, inserted: int, batch_size: int) -> bool:
        """May a batch of `batch_size` be sampled now? (samples_per_insert 0: once filled, always.)"""
        if self.origin is None:
            return False
        return self.samples_per_insert <= 0 or self._diff(inserted) - batch_size >= -self.tolerance

    def inserts_wait(self, inserted: int) -> bool:
        """Must the actors wait for the learner? Only when pinned, once sampling began."""
        return self.pin_actors and self.origin is not None and self._diff(inserted) > self.tolerance

    def took(self, batch_size: int) -> None:
        self.sampled += batch_size
