"""Resuming a run: which checkpoint, is it usable, and what each role continues from.

A checkpoint is `<base>.pth` (networks, optimizer, scheduler, counters, config; weights_only
loadable) plus the replay snapshot it names (`<base>-<updates>.replay.npz`). A run folder
resumes from the newer of checkpoint_final.pth and checkpoint.pth by their saved counters, not
by name. Every problem is a ResumeError with one line naming the file; nothing is written
before all checks pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


from common.config import Config, ConfigError
from common.records import ActorStart, CheckpointCounters

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint.pth")
# What a checkpoint and its replay memory were built with: changing any of these cannot continue a run
# (the networks' shapes, or the n-step returns and discounts stored in the replay memory).
STRUCTURAL = ("frame_stack", "frame_size", "num_actions", "dueling", "replay_capacity", "n_step", "gamma")
# What the game and its observations are: changing one mixes two envs in one replay memory and log.txt.
ENV_DEFINING = ("env", "show_a_button", "jump_repress")


class ResumeError(ValueError):
    """The checkpoint cannot be resumed from; one-line message naming the file and the reason."""


@dataclass
class ResumePlan:
    """Nothing to resume when `checkpoint` is None."""

    checkpoint: str | None = None
    replay_snapshot: str | None = None
    counters: CheckpointCounters = field(default_factory=CheckpointCounters)
    reset_epsilon: float | None = None

    @property
    def run_dir(self) -> str | None:
        return os.path.dirname(self.checkpoint) if self.checkpoint else None

    def for_role(self, role: str, actors: int = 1) -> ActorStart | str:
        """What a role process starts from: the checkpoint file for the learner, the replay snapshot for the
        replay server ("": none, a fresh start), an ActorStart for an actor (each its share of the run's steps)."""
        if role == "learner":
            return self.checkpoint or ""
        if role == "replay":
            return self.replay_snapshot or ""
        if self.checkpoint is None:
            return ActorStart()
        steps = self.counters.env_steps // max(1, actors)
        return ActorStart(actor_steps=steps, reset_epsilon=self.reset_epsilon, epsilon_origin=steps)


def find_checkpoint(path: str) -> str:
    """The checkpoint file itself, or the newest valid one in a run folder."""
    if not os.path.exists(path):
        raise ResumeError(f"{path}: no such file or folder")
    if not os.path.isdir(path):
        return path
    from common.checkpoint import CheckpointError, load_checkpoint  # torch: only when resuming

    candidates = []
    for name in CHECKPOINT_NAMES:
        candidate = os.path.join(path, name)
        if os.path.exists(candidate):
            try:
                counters = CheckpointCounters.from_saved(load_checkpoint(candidate).get("counters", {}))
            except (CheckpointError, ValueError):
                continue
            # Newest by its counters; of two equally new, the one whose replay memory was saved.
            candidates.append(((counters.updates, counters.env_steps, bool(counters.replay_file)), candidate))
    if not candidates:
        raise ResumeError(f"{path}: no loadable checkpoint_final.pth or checkpoint.pth in this folder")
    return max(candidates)[1]


def latest_checkpoint(runs_dir: str) -> str | None:
    """The newest run folder under runs_dir that holds a checkpoint (for the start-up question)."""
    if not os.path.isdir(runs_dir):
        return None
    for name in sorted(os.listdir(runs_dir), reverse=True):
        folder = os.path.join(runs_dir, name)
        if name.endswith("_run") and any(os.path.exists(os.path.join(folder, c)) for c in CHECKPOINT_NAMES):
            return folder
    return None


def load_resume_state(path: str) -> tuple[str, dict]:
    """(checkpoint file, its contents) for a checkpoint file or a run folder; ResumeError if unusable."""
    from common.checkpoint import CheckpointError, load_checkpoint  # torch: only when resuming

    checkpoint = find_checkpoint(path)
    try:
        state = load_checkpoint(checkpoint)
    except CheckpointError as exc:
        raise ResumeError(str(exc)) from None
    if "eval" in state and "counters" not in state:
        raise ResumeError(
            f"{checkpoint}: the network of the best evaluation, for --play; it holds no training "
            "state to resume (use the run folder or its checkpoint_final.pth)"
        )
    if not isinstance(state.get("config"), dict) or not isinstance(state.get("counters"), dict):
        raise ResumeError(f"{checkpoint}: damaged checkpoint (no config or counters)")
    return checkpoint, state


def plan_resume(
    checkpoint: str, state: dict, config: Config, reset_epsilon: float | None, new_env: bool = False
) -> ResumePlan:
    """Check that a loaded checkpoint can continue under `config`; ResumeError if not.
    Another env (id, or what its observations show) is refused unless `new_env`: the run's replay memory
    and log.txt would mix both."""
    try:
        saved = Config.from_dict(state["config"])
    except ConfigError as exc:
        raise ResumeError(f"{checkpoint}: damaged checkpoint (its config: {exc})") from None
    try:
        counters = CheckpointCounters.from_saved(state["counters"])
    except ValueError as exc:
        raise ResumeError(f"{checkpoint}: damaged checkpoint ({exc})") from None
    for name in STRUCTURAL:
        if getattr(saved, name) != getattr(config, name):
            raise ResumeError(
                f"{checkpoint}: incompatible: it was trained with {name}={getattr(saved, name)}, "
                f"this run has {name}={getattr(config, name)}"
            )
    changed = [name for name in ENV_DEFINING if getattr(saved, name) != getattr(config, name)]
    if changed and not new_env:
        name = changed[0]
        was = (
            f"trained on {saved.env}, not {config.env}"
            if name == "env"
            else f"trained with {name}={getattr(saved, name)}, this run has {name}={getattr(config, name)}"
        )
        raise ResumeError(
            f"{checkpoint}: it was {was}: continuing would "
            "mix both envs in one replay memory and log.txt (pass --resume-new-env to do it anyway)"
        )
    _check_networks(checkpoint, state, config)
    replay_snapshot = None
    if counters.replay_file:
        replay_snapshot = os.path.join(os.path.dirname(checkpoint), counters.replay_file)
        _check_snapshot(replay_snapshot, config)
    return ResumePlan(checkpoint, replay_snapshot, counters, reset_epsilon)


def _check_networks(path: str, state: dict, config: Config) -> None:
    from common.network import build_network

    net = build_network(config)
    for key in ("online", "target"):
        if not isinstance(state.get(key), dict):
            raise ResumeError(f"{path}: damaged checkpoint (no {key} network)")
        try:
            net.load_state_dict(state[key])
        except RuntimeError as exc:
            raise ResumeError(f"{path}: incompatible {key} network ({_first_mismatch(exc)})") from None


def _first_mismatch(exc: RuntimeError, limit: int = 160) -> str:
    """The first problem torch's load_state_dict lists (the line after its "Error(s) in loading" header)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "its tensors do not fit this run's network")
    return detail if len(detail) <= limit else detail[: limit - 3] + "..."


def _check_snapshot(path: str, config: Config) -> None:
    # Imported here: the snapshot module loads the replay buffer and numba, ~1 s a launch that resumes nothing.
    from replay_server.snapshot import SnapshotError, check_snapshot

    try:
        check_snapshot(path, config.replay_capacity, config.frame_size, config.frame_stack, config.num_actions)
    except SnapshotError as exc:
        raise ResumeError(str(exc)) from None
