"""The actor's exploration schedule."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from common.config import Config


def linear_epsilon(step: int, start: float, end: float, decay_steps: int) -> float:
    """Epsilon falls linearly from `start` to `end` over `decay_steps` env steps, then holds."""
    if decay_steps <= 0:
        return end
    return start + (end - start) * min(1.0, step / decay_steps)


def actor_epsilon(c: Config, actor_index: int, steps: int, start: float | None = None, env: int = 0) -> float:
    """The exploration of env `env` of actor `actor_index` after `steps` env steps of the actor's schedule:
    Ape-X's fixed per-env value, or the anneal from `start` (epsilon_start unless a resume restarted
    exploration elsewhere)."""
    if c.epsilon_schedule == "apex":
        return c.apex_epsilon_of(actor_index, env)
    return linear_epsilon(steps, c.epsilon_start if start is None else start, c.epsilon_end, c.epsilon_decay_steps)
