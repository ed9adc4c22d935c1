"""`import gym`, minus the "Gym has been unmaintained" banner gym 0.26 prints on every import.

Actor-side only. Import gym as `from actor.quiet_gym import gym`.
"""

import contextlib
import io

with contextlib.redirect_stderr(io.StringIO()):
    import gym  # noqa: F401
