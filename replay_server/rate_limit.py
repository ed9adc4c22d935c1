"""Replay rate limiting, as in DeepMind's Reverb: sampling waits for a minimum fill, and for a
target samples-per-insert ratio, so a fast learner cannot overfit a slowly filling buffer.

Counts are in transitions since this server started (a restored buffer does not start with
credit). Actors are never slowed: they keep playing at full speed, and the learner waits for them.
"""
from __future__ import annotations


def sampling_allowed(size: int, sampled: int, inserted: int, batch_size: int, min_size: int,
                     samples_per_insert: float, tolerance: float) -> bool:
    """May a batch of `batch_size` be sampled now?

    size: transitions stored; sampled/inserted: transitions sampled/inserted since start;
    samples_per_insert 0 turns the ratio off (only the minimum fill applies)."""
    if size < max(min_size, 1):
        return False
    if samples_per_insert <= 0:
        return True
    return sampled + batch_size <= inserted * samples_per_insert + tolerance
