"""One config object for every role: hyperparameters, addresses and run options.

Every field is declared in its section (ENV, ACTOR, ...) with a default that makes sense for DQN on
Super Mario Bros and a doc, both kept in the field's metadata, which `launch.py --help-config` prints
by section. Any field can be changed on the command line with `--set name=value`; the launcher saves
the final config as `config.json` in the run folder.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, fields

from common.addresses import AddressError, parse_endpoint, valid_host


ACTION_SETS = {"simple": 7, "right_only": 5, "complex": 12}
"""Actions in each joypad action set (gym_super_mario_bros.actions; the learner does not import it)."""
LAUNCH_ONLY = ("headless", "max_episodes", "max_steps", "max_minutes")
"""What one launch chose for itself: --resume does not take these from the saved config. The stop limits
count from the launch's start (a run stopped by --max-minutes would otherwise stop again that many minutes
after each resume), and a run started on a server and resumed at a desk shows its window again."""
TEST_ENV_ID = "MarioApexTest-v0"
"""Id of the tiny built-in test environment (see actor/toy_level.py)."""
MAX_SAMPLE_BATCH = 4096  # transitions in one sample request
MAX_ENVS_PER_ACTOR = 64  # each is an emulator in the actor's process
MAX_QUANTILES = 256  # QR-DQN's quantiles per action (the paper used 200)
MAX_N_STEP = 16
"""Largest n_step; bounds how many context frames a transitions chunk may carry."""


def frames_per_message(batch_size: int, frame_stack: int, frame_size: int, max_message_bytes: int) -> int:
    """Most transitions, in whole batches, whose frames (obs and next obs) fit one batch message, for a
    learner that gets its frames in the messages (another machine); 0: not even one batch fits."""
    # frames, their numbers (a batch_mirror names each and may send it along, int64 each), the other fields
    per_transition = 2 * frame_stack * (frame_size * frame_size + 16) + 32
    return (max(0, max_message_bytes - 64 * 1024) // per_transition) // batch_size * batch_size


REWARD_SCHEMES = ("original", "flag_unclipped", "progress")


class ConfigError(ValueError):
    """A config value that cannot be used; the message is one line, fit for the user."""


@dataclass(frozen=True)
class Section:
    """A group of settings: Config's fields are declared as SECTION(default, doc), which keeps each field's
    doc and section in its metadata (what --help-config prints)."""

    name: str
    title: str

    def __call__(self, default, doc: str, flag: str | None = None):
        """`flag`: the field is also a launch.py flag, --name (--no-name for a switch that is on by default),
        taking a value shown as `flag` ("" for a switch)."""
        metadata = {"section": self, "doc": doc} if flag is None else {"section": self, "doc": doc, "flag": flag}
        return dataclasses.field(default=default, metadata=metadata)


ENV = Section("env", "the game, its wrappers and episode limits")
MODEL = Section("model", "what actors, replay and learner must agree on: observations, actions, network, return")
ACTOR = Section("actor", "exploration, evaluation and acting")
REPLAY = Section("replay", "the prioritized replay buffer and the replay ratio")
LEARNER = Section("learner", "the update, the target network, checkpoints and the device")
NETWORK = Section("network", "addresses, links, message limits and restarts")
RUN = Section("run", "folders, the window, videos, limits and the actor processes")
SECTIONS = (ENV, MODEL, ACTOR, REPLAY, LEARNER, NETWORK, RUN)
ROLE_SECTIONS = {
    "actor": (ENV, MODEL, ACTOR, REPLAY, NETWORK, RUN),  # REPLAY: actors wait when the replay ratio is pinned
    "replay": (MODEL, REPLAY, NETWORK, RUN),
    "learner": (MODEL, REPLAY, LEARNER, NETWORK, RUN),
}
"""The sections each role process reads (Config.for_role): the learner and replay server never see the game's
settings, actors never see the optimizer's."""


@dataclass
class Config:
    env: str = ENV(
        "SuperMarioBros-1-1-v0",
        "A gym-super-mario-bros id, several comma-separated (a level sampled per episode, or played in order with "
        "curriculum), or MarioApexTest-v0, the built-in test environment.",
        flag="ID",
    )
    frame_skip: int = ENV(4, "Emulator frames per agent step (the action repeats; rewards are summed).")
    frame_size: int = MODEL(84, "Observations are frame_size x frame_size grayscale frames.")
    frame_stack: int = MODEL(4, "Frames stacked into one observation.")
    action_set: str = ENV(
        "simple",
        "gym-super-mario-bros joypad action set: simple (SIMPLE_MOVEMENT, 7 actions), right_only (RIGHT_ONLY, 5: "
        "no-op and right with A/B combinations) or complex (COMPLEX_MOVEMENT, 12). The test env has simple only.",
    )
    num_actions: int = MODEL(0, "Size of the action set; 0 = that of action_set (checked against the env at start).")
    reward_scheme: str = ENV(
        "original",
        "original: env reward +1 forward, -1 back, -50 death, +1000 flag; progress (the original's later "
        "scheme): +0.1 per x_pos gained, -50 per life lost, +2000 flag. Both then /10, clipped to [-1, 1]. "
        "flag_unclipped: original, but the flag's +1000/10 is added after the clip (the flag is worth 100, not 1).",
    )
    jump_repress: bool = ENV(
        False,
        "Holding A on the ground jumps again (A is released for one emulator frame on landing), a change to "
        'the game\'s controls. It makes 1-1 easy for the wrong reason: the constant action "right A" then reaches '
        "the flag, with no learning at all. For experiments; show_a_button is the fix that keeps the game. "
        "Real Mario only (it reads the emulator's RAM).",
    )
    show_a_button: bool = ENV(
        False,
        "Draw whether the last action held the A button into the top rows of each observation frame (white: "
        "held, black: not; 2 rows at frame_size 84). The game jumps only "
        "on a new press of A, and without this the frames cannot tell a Mario holding A against a pipe (who must "
        'let go to jump) from one who can jump: a greedy policy holding "right A" there stays stuck.',
    )
    single_life: bool = ENV(
        False, "End the episode when a life is lost (for multi-life envs such as SuperMarioBros-v0)."
    )
    curriculum: bool = ENV(
        False,
        "With several comma-separated env ids: play the levels in order, moving on when the recent average "
        "reward passes curriculum_threshold (off: a uniformly random level each episode).",
        flag="",
    )
    curriculum_threshold: float = ENV(
        30.0, "Curriculum: average training-episode reward that moves an actor on to the next level ..."
    )
    curriculum_window: int = ENV(20, "... averaged over this many of its latest episodes on the current level.")
    max_episode_steps: int = ENV(4000, "Agent steps after which an episode is truncated (no bootstrap cut).")
    stall_steps: int = ENV(
        0,
        "Truncate an episode (training and evaluation) after this many agent steps without a new rightmost "
        "x_pos (0 = never); a Mario stuck at a pipe otherwise waits out the game clock (~2,400 steps).",
    )
    stall_terminal: bool = ENV(
        False,
        "A training stall (stall_steps) ends the episode as a death does: terminated, with the death penalty, not "
        'a truncation that bootstraps. Standing still then costs what falling does, so holding "right A" against a '
        "pipe is worth much less than letting go and jumping, instead of about gamma times as much.",
    )
    eval_stall_steps: int = ENV(
        300,
        "The same for evaluation and --play episodes (0 = as stall_steps): a greedy Mario stuck at a pipe for "
        "this long stays stuck, so waiting out the game clock would only cost wall time.",
    )

    epsilon_start: float = ACTOR(1.0, "Exploration rate at the first step.")
    epsilon_end: float = ACTOR(0.05, "Exploration rate after the decay.")
    epsilon_decay_steps: int = ACTOR(250_000, "Actor env steps over which epsilon falls linearly from start to end.")
    eval_every_episodes: int = ACTOR(
        50, "Actor 0 plays greedy evaluation episodes after every N training episodes (0 = never)."
    )
    eval_episodes: int = ACTOR(1, "Evaluation episodes each time (their transitions are not trained on).")
    eval_epsilon: float = ACTOR(0.0, "Exploration rate during evaluation (0 = fully greedy).")
    chunk_size: int = ACTOR(64, "Transitions per message from actor to replay server (also sent at episode end).")
    epsilon_schedule: str = ACTOR(
        "anneal",
        "anneal: every actor's epsilon falls from epsilon_start to epsilon_end; apex: fixed per-actor values "
        "as in Ape-X, eps_i = apex_epsilon ** (1 + apex_alpha * i / (N - 1)) for actor i of N.",
    )
    apex_epsilon: float = ACTOR(0.4, "Ape-X schedule: the base epsilon (actor 0's) ...")
    apex_alpha: float = ACTOR(
        7.0, "... and the exponent spread (the last actor gets apex_epsilon ** (1 + apex_alpha))."
    )
    seed: int = RUN(
        0, "Base random seed; env j of actor i uses seed + (first_actor + i) * envs_per_actor + j.", flag="N"
    )
    acting_precision: str = ACTOR(
        "auto",
        "The actors' greedy forward: float32 (exact); int8 (the first linear layer as int8, one scale per row, "
        "the convolutions in bfloat16: about a third faster, and the action can differ from float32's only "
        "where two Q-values nearly tie); auto (int8 where this CPU runs it at least 10% faster). The learner "
        "and the evaluation episodes always use float32.",
    )

    replay_capacity: int = REPLAY(100_000, "Transitions kept in the prioritized replay buffer.")
    per_alpha: float = REPLAY(0.6, "Priority exponent: P(i) = p_i^alpha / sum_k p_k^alpha.")
    per_beta_start: float = REPLAY(0.4, "Importance-sampling exponent at the first update, annealed to 1.")
    per_beta_updates: int = REPLAY(200_000, "Learner updates over which beta rises linearly to 1.")
    per_eps: float = REPLAY(1e-6, "Added to |TD error| so no transition gets zero priority.")
    learning_starts: int = REPLAY(10_000, "Stored transitions needed before the replay server serves sample batches.")
    samples_per_insert: float = REPLAY(
        0.0,
        "Rate limit: sampled transitions per inserted one the learner may reach (0 = no limit); past it, "
        "sample requests wait for the actors. DQN's classic ratio is 8 (batch 32 every 4 steps).",
    )
    spi_tolerance: float = REPLAY(
        5_000.0,
        "How many sampled transitions the learner may run ahead of samples_per_insert (and, pinned, behind it).",
    )
    pin_replay_ratio: bool = REPLAY(
        True,
        "With samples_per_insert > 0, actors also wait when the learner falls behind the ratio, so a learning "
        "curve over env steps does not depend on machine load (false: actors never wait, the ratio is a cap).",
    )

    n_step: int = MODEL(
        3, "Steps of real rewards before bootstrapping: R = sum_i gamma^i r_(t+i) + gamma^n Q(s_(t+n)) (Ape-X uses 3)."
    )
    dueling: bool = MODEL(True, "Dueling head: Q = V + A - mean(A).")
    quantiles: int = MODEL(
        0,
        "0: the network estimates each action's expected return (DQN). N > 0: QR-DQN (Dabney et al., 2018), N "
        "quantiles of each action's return, trained with the quantile Huber loss against the n-step target's "
        "quantiles; actions are chosen by their mean (32 is a usual N).",
    )
    batch_size: int = LEARNER(32, "Transitions per gradient update.")
    gamma: float = MODEL(0.99, "Discount factor.")
    lr: float = LEARNER(1e-4, "Adam learning rate at the start.")
    lr_end_factor: float = LEARNER(0.1, "The LR scheduler decays the learning rate linearly to lr * lr_end_factor ...")
    lr_decay_updates: int = LEARNER(1_000_000, "... over this many learner updates, then holds it.")
    adam_eps: float = LEARNER(1.5e-4, "Adam epsilon (DQN-style, larger than the default for stability).")
    grad_clip_norm: float = LEARNER(10.0, "Gradient-norm clipping threshold.")
    double_dqn: bool = LEARNER(True, "Pick the next action with the online network, value it with the target network.")
    target_update_every: int = LEARNER(
        2_000, "Learner updates between copies of the online network into the target network (when target_tau is 0)."
    )
    target_tau: float = LEARNER(
        0.0, "0: hard target updates (above); > 0: soft updates every step, target += tau * (online - target)."
    )
    publish_every: int = LEARNER(100, "Learner updates between weight broadcasts to the actors.")
    prefetch_batches: int = NETWORK(2, "Sample requests the learner keeps in flight so it never waits for data.")
    transitions_per_request: int = LEARNER(
        256,
        "Smaller batches are fetched several per request (shuffled, then split): ZeroMQ's per-message cost "
        "is shared, which lets batch-32 sampling keep pace with an in-process buffer. 0: one per request.",
    )
    checkpoint_every: int = LEARNER(
        50,
        "Episodes between checkpoint.pth saves (0 = only the final checkpoint; checkpoint_final.pth on every stop) ...",
        flag="N",
    )
    checkpoint_time_share: float = LEARNER(
        0.05,
        "... spaced so that saving takes at most this share of the learner's time, which waits for the replay "
        "snapshot: after a checkpoint that took T seconds, none for T / share seconds (1 = no spacing).",
    )
    device: str = LEARNER(
        "auto", "Learner device: auto (CUDA, then MPS, then CPU), cpu, cuda or mps.", flag="{auto,cpu,cuda,mps}"
    )
    mixed_precision: bool = LEARNER(
        False,
        "Learner forward passes in float16 on CUDA (with loss scaling), bfloat16 elsewhere; the loss, "
        "the TD targets and the weights stay float32. On a CPU the learner times bfloat16 against float32 at "
        "start and keeps the faster (a CPU without native bfloat16 runs it about 10x slower).",
    )
    compile_update: bool = LEARNER(
        False,
        "Run the learner's forward passes, TD targets, loss and backward through torch.compile (on CUDA with "
        "CUDA graphs, mode reduce-overhead). It pays on a GPU at small batches, where an update is bound by "
        "kernel launches, not arithmetic; the first updates are slow (compiling). Same results as without; if "
        "compiling fails the learner says so in one line and runs uncompiled.",
    )

    bind: str = NETWORK(
        "127.0.0.1",
        "Address this launcher's replay server and learner listen on; the flag's PORT sets base_port. Anything "
        "but loopback needs CurveZMQ keys (--keys) or --insecure.",
        flag="HOST[:PORT]",
    )
    base_port: int = NETWORK(
        47_555, "First of three consecutive TCP ports: replay-in (+0), replay-sample (+1), weights (+2).", flag="PORT"
    )
    learner: str = NETWORK(
        "",
        "HOST[:PORT] of the learner side (its bind), for --role actor on another machine; empty: this machine.",
        flag="HOST[:PORT]",
    )
    replay: str = NETWORK(
        "",
        "HOST[:PORT] of a replay server started on its own (--role replay), for --role learner (which then starts "
        "none) and --role actor; empty: the learner side's.",
        flag="HOST[:PORT]",
    )
    local_ipc: bool = NETWORK(
        True,
        "Roles on the same machine talk over ipc:// (Unix domain sockets in a folder only this user may enter: "
        "no other user can connect, and they are faster than TCP for the large sample batches); roles on other "
        "machines over tcp://. With a loopback host no TCP port is opened at all. false: loopback TCP, which any "
        "local user can reach (needs --keys or --insecure).",
    )
    shared_frames: bool = NETWORK(
        True,
        "A learner on the replay server's machine reads batch frames from the server's shared memory "
        "(Linux), so only frame numbers cross ZeroMQ: the replay service then keeps up with small batches.",
    )
    frame_mirror: bool = NETWORK(
        True,
        "A learner that does not read that shared memory (on another machine, or shared_frames false) keeps "
        "a copy of the server's frame ring, so each frame crosses the network once per time it is written "
        "(memory: up to replay_capacity frames, about 7 KB each); false: every batch carries its frames (no "
        "copy, about 56 KB per sampled transition on the wire).",
    )
    pause_without_actors: bool = NETWORK(
        True,
        "The replay server stops serving batches while no actor is connected, so a learner whose actors "
        "stopped waits for new experience instead of overfitting the old.",
    )
    actor_restarts: int = NETWORK(
        3, "Times the launcher restarts each crashed actor process before giving up and stopping the run."
    )
    max_message_bytes: int = NETWORK(
        64 * 1024 * 1024, "Largest network message accepted; bigger ones are refused by ZeroMQ or dropped."
    )
    report_interval_s: float = NETWORK(1.0, "Seconds between progress reports from each process to the launcher.")

    runs_dir: str = RUN("runs", "Parent folder of the run folders (YYYY-MM-DD_HH-MM-SS_run).", flag="DIR")
    headless: bool = RUN(False, "No live window (also automatic without a display).", flag="")
    video: bool = RUN(
        True, "Record mario_run.mp4 (actor 0) and keep the best episode as mario_best_run_<reward>.mp4.", flag=""
    )
    max_episodes: int = RUN(0, "Stop cleanly after this many episodes (0 = no limit).", flag="N")
    max_steps: int = RUN(0, "Stop cleanly after this many env steps over all actors (0 = no limit).", flag="N")
    max_minutes: float = RUN(0.0, "Stop cleanly after this many minutes of wall time (0 = no limit).", flag="M")
    actors: int = RUN(1, "Actor processes to start.", flag="N")
    envs_per_actor: int = RUN(
        2,
        "Envs each actor process steps, in two groups: while the emulators play one group's step, the actor "
        "chooses the other group's actions in one batched forward (each env has its own seed, epsilon, "
        "episodes and n-step chunks). Actor 0's env 0 is the one shown and recorded to mario_run.mp4.",
        flag="K",
    )
    first_actor: int = RUN(
        0,
        "With actors on several machines: the run-wide number of this launcher's first actor, so seeds and "
        "Ape-X epsilons differ between machines (e.g. 0 on the first machine of 4 actors, 4 on the second).",
    )
    total_actors: int = RUN(
        0, "With actors on several machines: all actors of the run, the N of the Ape-X schedule (0 = actors)."
    )

    # ------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        if self.num_actions == 0 and self.action_set in ACTION_SETS:
            self.num_actions = ACTION_SETS[self.action_set]
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first unusable value."""
        if self.action_set not in ACTION_SETS:
            raise ConfigError(f"action_set must be one of {', '.join(ACTION_SETS)}, got {self.action_set!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, got {value}")
        positive = (
            "eval_episodes",
            "frame_skip",
            "frame_size",
            "frame_stack",
            "num_actions",
            "max_episode_steps",
            "chunk_size",
            "replay_capacity",
            "per_beta_updates",
            "batch_size",
            "lr_decay_updates",
            "target_update_every",
            "publish_every",
            "prefetch_batches",
            "actors",
            "envs_per_actor",
            "curriculum_window",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        non_negative = (
            "eval_every_episodes",
            "epsilon_decay_steps",
            "learning_starts",
            "checkpoint_every",
            "stall_steps",
            "eval_stall_steps",
            "max_episodes",
            "max_steps",
            "seed",
            "actor_restarts",
            "first_actor",
            "total_actors",
        )
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.total_actors and self.first_actor + self.actors > self.total_actors:
            raise ConfigError(
                f"actors {self.first_actor}..{self.first_actor + self.actors - 1} do not fit in "
                f"total_actors={self.total_actors}"
            )
        unit = (
            "eval_epsilon",
            "epsilon_start",
            "epsilon_end",
            "per_alpha",
            "per_beta_start",
            "lr_end_factor",
            "target_tau",
            "apex_epsilon",
        )
        for name in unit:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if not 0.0 < self.checkpoint_time_share <= 1.0:
            raise ConfigError(f"checkpoint_time_share must be above 0 and at most 1, got {self.checkpoint_time_share}")
        if not 0 <= self.max_minutes < float("inf"):
            raise ConfigError(f"max_minutes must not be negative, got {self.max_minutes}")
        if self.acting_precision not in ("auto", "float32", "int8"):
            raise ConfigError(f"acting_precision must be auto, float32 or int8, got {self.acting_precision!r}")
        if self.epsilon_schedule not in ("anneal", "apex"):
            raise ConfigError(f"epsilon_schedule must be anneal or apex, got {self.epsilon_schedule!r}")
        if not 0 <= self.apex_alpha < 100:
            raise ConfigError(f"apex_alpha must be between 0 and 100, got {self.apex_alpha}")
        for name in ("learner", "replay"):
            if getattr(self, name):
                try:
                    parse_endpoint(getattr(self, name), self.base_port, name)
                except AddressError as exc:
                    raise ConfigError(str(exc)) from None
        if not valid_host(self.bind):
            raise ConfigError(
                f"bind must be a host name or IP address (0.0.0.0 for every interface), got {self.bind!r}"
            )
        if self.stall_terminal and not self.stall_steps:
            raise ConfigError("stall_terminal needs stall_steps (the steps without progress that make a stall)")
        if self.samples_per_insert < 0 or self.spi_tolerance < 0:
            raise ConfigError("samples_per_insert and spi_tolerance must not be negative")
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma}")
        for name in ("lr", "adam_eps", "grad_clip_norm", "per_eps", "report_interval_s"):
            if not 0 < getattr(self, name) < float("inf"):
                raise ConfigError(f"{name} must be positive and finite, got {getattr(self, name)}")
        if self.reward_scheme not in REWARD_SCHEMES:
            raise ConfigError(f"reward_scheme must be one of {', '.join(REWARD_SCHEMES)}, got {self.reward_scheme!r}")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise ConfigError(f"device must be one of auto, cpu, cuda, mps, got {self.device!r}")
        if not 1 <= self.base_port <= 65_533:
            raise ConfigError(f"base_port must be between 1 and 65533, got {self.base_port}")
        if self.max_message_bytes < 1024:
            raise ConfigError(f"max_message_bytes must be at least 1024, got {self.max_message_bytes}")
        if not 1 <= self.n_step <= MAX_N_STEP:
            raise ConfigError(f"n_step must be between 1 and {MAX_N_STEP}, got {self.n_step}")
        if not 0 <= self.quantiles <= MAX_QUANTILES:
            raise ConfigError(f"quantiles must be between 0 and {MAX_QUANTILES}, got {self.quantiles}")
        if self.envs_per_actor > MAX_ENVS_PER_ACTOR:
            raise ConfigError(f"envs_per_actor must be at most {MAX_ENVS_PER_ACTOR}, got {self.envs_per_actor}")
        if self.frame_size > 256:
            raise ConfigError(f"frame_size must be at most 256, got {self.frame_size}")
        if self.learning_starts > self.replay_capacity:
            raise ConfigError(
                f"learning_starts ({self.learning_starts}) exceeds replay_capacity ({self.replay_capacity})"
            )
        if self.batch_size > self.replay_capacity:
            raise ConfigError(f"batch_size ({self.batch_size}) exceeds replay_capacity ({self.replay_capacity})")
        for name in ("batch_size", "transitions_per_request"):
            if not 0 <= getattr(self, name) <= MAX_SAMPLE_BATCH:
                raise ConfigError(f"{name} must be between 0 and {MAX_SAMPLE_BATCH}, got {getattr(self, name)}")
        if not frames_per_message(self.batch_size, self.frame_stack, self.frame_size, self.max_message_bytes):
            raise ConfigError(
                f"batch_size {self.batch_size} of {self.frame_stack}x{self.frame_size}x{self.frame_size} "
                f"frame stacks does not fit in max_message_bytes ({self.max_message_bytes:,}) when frames "
                "travel in the messages: lower batch_size or raise max_message_bytes"
            )

    @property
    def actors_wait_for_learner(self) -> bool:
        """The replay ratio is pinned both ways: actors wait when the learner falls behind it."""
        return self.pin_replay_ratio and self.samples_per_insert > 0

    def actor_queue_chunks(self) -> int:
        """High-water mark of the actor -> replay link, in chunks on each side. Pinned to a replay ratio,
        a short queue keeps actors within a few chunks of it; otherwise a long one rides out an outage."""
        return 4 if self.actors_wait_for_learner else 1000

    def run_actor(self, actor: int) -> int:
        """The run-wide number of this launcher's actor `actor` (they differ between actor machines)."""
        return self.first_actor + actor

    def run_env(self, actor: int, env: int = 0) -> int:
        """The run-wide number of env `env` of this launcher's actor `actor` (actor-major)."""
        return self.run_actor(actor) * self.envs_per_actor + env

    def apex_epsilon_of(self, actor: int, env: int = 0) -> float:
        """Ape-X's fixed epsilon of env `env` of this launcher's actor `actor`, among all the run's envs."""
        n, i = (self.total_actors or self.actors) * self.envs_per_actor, self.run_env(actor, env)
        return self.apex_epsilon ** (1 + self.apex_alpha * i / (n - 1)) if n > 1 else self.apex_epsilon

    # --- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        """Build from a dict (e.g. config.json, old names included); unknown keys are an error, missing ones
        default."""
        data = current_names(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        kwargs = {name: _coerce(name, value) for name, value in data.items()}
        return cls(**kwargs)

    def replace(self, **changes) -> "Config":
        """A validated copy with some fields changed (a new action_set brings its own num_actions)."""
        if "action_set" in changes and "num_actions" not in changes:
            changes["num_actions"] = 0
        return Config.from_dict({**self.to_dict(), **changes})

    def save(self, path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    def for_role(self, role: str) -> "Config":
        """This config as the role process `role` sees it (ROLE_SECTIONS): reading a field of another section
        raises AttributeError, so a role cannot come to depend on a setting it was not meant to read."""
        view = copy.copy(self)
        view.__class__ = RoleConfig
        view.__dict__["_role"] = role
        view.__dict__["_sections"] = {s.name for s in ROLE_SECTIONS[role]}
        return view

    @staticmethod
    def describe() -> list[tuple[Section, str, str, object, str]]:
        """(section, name, type, default, doc) for every field, for --help-config."""
        return [(f.metadata["section"], f.name, f.type, f.default, f.metadata["doc"]) for f in fields(Config)]


class _SectionField:
    """A field of RoleConfig: read only by a role that receives its section."""

    def __init__(self, name: str, section: Section):
        self.name, self.section = name, section.name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        if self.section not in obj.__dict__["_sections"]:
            raise AttributeError(
                f"the {obj.__dict__['_role']} does not receive {self.section} settings ({self.name}); "
                "see ROLE_SECTIONS in common/config.py"
            )
        return obj.__dict__[self.name]

    def __set__(self, obj, value) -> None:
        raise AttributeError(f"a role's config is read-only ({self.name})")


class RoleConfig(Config):
    """Config.for_role's view. Its to_dict() is still the whole run's config: what a checkpoint records, so that
    --resume gets back every setting of the run."""

    def to_dict(self) -> dict:
        return {f.name: self.__dict__[f.name] for f in fields(Config)}


for _field in fields(Config):
    setattr(RoleConfig, _field.name, _SectionField(_field.name, _field.metadata["section"]))


def parse_assignment(text: str) -> tuple[str, object]:
    """Parse one `--set name=value` into (name, typed value); ConfigError if unusable."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ConfigError(f"--set expects name=value, got {text!r}")
    if name in RENAMED:
        [(name, raw)] = current_names({name: raw.strip()}).items()
    if name not in {f.name for f in fields(Config)}:
        raise ConfigError(f"unknown config field {name!r} (see --help-config)")
    return name, _coerce(name, raw.strip() if isinstance(raw, str) else raw)


RENAMED = {
    "env_id": "env",
    "num_actors": "actors",
    "record_video": "video",
    "level_mode": "curriculum",
    "checkpoint_every_episodes": "checkpoint_every",
    "host": "bind",
    "learner_address": "learner",
    "replay_address": "replay",
}
"""Fields renamed to their flags' names: config.json files, checkpoints and --set still take the old names."""


def current_names(data: dict) -> dict:
    """`data` with old field names (RENAMED) under their new ones; a new name given too wins."""
    out = {k: v for k, v in data.items() if k not in RENAMED}
    for old, new in RENAMED.items():
        if old in data and new not in data:
            value = data[old]
            if old == "level_mode":  # sample | curriculum, now a switch
                if value not in ("sample", "curriculum"):
                    raise ConfigError(f"level_mode must be sample or curriculum, got {value!r}")
                value = value == "curriculum"
            out[new] = value
    return out


_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def _coerce(name: str, value):
    """Convert value (possibly a string from the command line) to the field's type."""
    kind = _TYPES[{f.name: f.type for f in fields(Config)}[name]]
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower().replace("_", "")
        if kind is bool:
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        try:
            if kind is float:
                number = float(text)
            elif "e" in text:  # "1e5" is an integer; "1.5e0" and "1e400" are not
                number = float(text)
                if not number.is_integer():
                    raise ValueError(text)
                number = int(number)
            else:
                number = int(text)
        except ValueError:
            raise ConfigError(
                f"{name} must be {'a number' if kind is float else 'an integer'}, got {value!r}"
            ) from None
        return number
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (
        kind is bool
        and not isinstance(value, bool)
        or kind is not bool
        and not isinstance(value, kind)
        or kind is int
        and isinstance(value, bool)
    ):
        raise ConfigError(f"{name} must be of type {kind.__name__}, got {value!r}")
    return value
