"""The actor's exploration schedule."""


def linear_epsilon(step: int, start: float, end: float, decay_steps: int) -> float:
    """Epsilon falls linearly from `start` to `end` over `decay_steps` env steps, then holds."""
    if decay_steps <= 0:
        return end
    return start + (end - start) * min(1.0, step / decay_steps)
