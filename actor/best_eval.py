"""The network of the run's best greedy evaluation, kept as best_eval.pth in the run folder.

The learner's checkpoints hold the newest weights, which may no longer clear what an earlier
evaluation cleared; this file holds the very network that played the best evaluation episode
(a flag first, then the reward), so `launch.py --play RUN/best_eval.pth` replays that episode:
the emulator and the greedy policy are deterministic.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

from common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from common.config import Config
from common.records import EvalResult, as_map

BEST_EVAL_FILE = "best_eval.pth"


def _score(result: dict) -> tuple[bool, float]:
    """A flag first, then the reward; from an EvalResult's map (as best_eval.pth keeps it)."""
    return bool(result["flag"]), float(result["reward"])


class BestEval:
    def __init__(self, run_dir: str, config: Config, log: Callable[[str], None]):
        self.path = os.path.join(run_dir, BEST_EVAL_FILE)
        self.config = config
        self.log = log
        self.best: tuple[bool, float] | None = None
        if os.path.exists(self.path):  # a resumed run: beat the evaluation already kept
            try:
                self.best = _score(load_checkpoint(self.path)["eval"])
            except (CheckpointError, KeyError, TypeError, ValueError) as exc:
                log(f"{self.path} is unreadable and will be replaced by the next evaluation ({exc})")

    def offer(self, result: EvalResult, net: torch.nn.Module) -> bool:
        """Save `net` if `result` beats the best evaluation so far; True if it was saved."""
        played = as_map(result)
        if self.best is not None and _score(played) <= self.best:
            return False
        try:
            save_checkpoint({"config": self.config.to_dict(), "online": net.state_dict(), "eval": played}, self.path)
        except OSError as exc:
            self.log(f"could not save {BEST_EVAL_FILE} ({exc.strerror or exc}); training goes on")
            return False
        self.best = _score(played)
        return True
