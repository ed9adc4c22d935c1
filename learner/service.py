"""The learner process: pulls prioritized batches, trains, returns priorities, publishes weights.

Sockets (addresses from the config, types and options from common/topology.py):
- replay_sample, DEALER (connects): keeps `prefetch_batches` "sample" requests in flight so the
  next batches are on their way while these train; their priorities go without waiting, on the
  next request. Small batches come several per request, and on the replay server's machine their
  frames are read from the server's shared memory; elsewhere from the learner's copy of it, to which
  each frame is sent once (replay_batches.py).
- weights, PUB (bound): "weights" messages after every `publish_every` updates, at start, and
  again every few seconds so actors that join late get them; "bye" when it stops.
Checkpoints: checkpoint.pth every `checkpoint_every` episodes, checkpoint_final.pth on stop,
each naming a replay snapshot beside it (protocol below, at `checkpoint`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time

import numpy as np
import torch
import zmq

from common.addresses import connect_address
from common.checkpoint import CheckpointError, load_checkpoint
from common.log_limit import LogLimit
from common.metrics import Metrics
from common.network import weights_to_arrays
from common.protocol import ProtocolError, decode_parts, encode
from common.run_files import FRAME_FILE, SNAPSHOT_FILE, snapshot_name
from common.records import CheckpointCounters, LearnerProgress, ReplayStats, as_map
from common.runtime import RoleRuntime
from common.topology import bind_socket, connect_socket
from learner.replay_batches import ReplayBatches
from learner.device import pick_device
from learner.learning import DQNLearner

POLL_MS = 100
REPUBLISH_S = 5.0
# A snapshot writes the frames stored since the previous one (about 7 KB each; all of them in a new run folder), so
# no fixed timeout fits: the learner waits as long as its files grow and gives up after SNAPSHOT_STALL_S without.
SNAPSHOT_STALL_S = 30.0
# The final snapshot must fit the stop: the launcher allows the learner 0.9 x 7.5 s from the start of the stop, of which
# the actors may take 2.25 s (launcher/supervisor.py STOP_SHARE); the .pth after it takes well under a second.
FINAL_SNAPSHOT_S = 4.0
BATCHES = ("batch", "batch_shared", "batch_mirror")


class LearnerService:
    def __init__(self, runtime: RoleRuntime, run_dir: str):
        self.rt = runtime
        c = self.config = runtime.config
        self.run_dir = run_dir
        self.device = pick_device(c.device)
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 2) - c.actors))
        self.learner = DQNLearner(c, self.device, log=self.rt.log)
        self.dealer = connect_socket(runtime.transport, c, "replay_sample")
        self.pub = bind_socket(runtime.transport, c, "weights")
        local = connect_address(c, "replay_sample").startswith("ipc://")
        self.batches = ReplayBatches(
            c.batch_size,
            c.transitions_per_request,
            c.frame_stack,
            c.frame_size,
            c.shared_frames and local,
            runtime.log,
            seed=c.seed,
            max_message_bytes=c.max_message_bytes,
            mirror=c.frame_mirror,
        )
        self.metrics = Metrics(run_dir, ".learner", runtime.log)
        self.replay_stats = ReplayStats()
        self.weights_version = 0
        self._published_updates = 0
        self._weights_msg = b""
        self.last_publish = 0.0
        self.in_flight = 0
        self._replay_connects = 0  # handshakes with a replay server so far (a new one forgets our requests)
        self.dropped = 0
        self.dropped_priorities = 0  # new priorities that could not be sent (the replay server gone or saturated)
        self.wait_s = 0.0
        self._rate_mark = (time.monotonic(), 0)
        self._checkpointed_at_episode = 0
        self._next_checkpoint_at = self._last_started = 0.0  # no periodic checkpoint starts before the former
        self._spacing_said = False
        self._replay: CheckpointCounters | None = None  # those of the newest checkpoint with a good snapshot
        self._named: dict[str, str] = {}  # checkpoint base -> the snapshot its .pth on disk names
        self._failures, self._failure_log = 0, LogLimit()  # checkpoint failures (a full disk, say)
        self._drop_log = LogLimit()
        self._window = {"loss": 0.0, "q_mean": 0.0, "n": 0}
        self._losses = (0.0, 0.0)  # (loss, mean Q) of the last report interval with updates
        self._wait_fraction = 0.0

    # --- loop --------------------------------------------------------------------------------
    def run(self) -> None:
        restored = self.replay_stats.size  # a resumed run's replay memory
        if restored >= self.config.learning_starts:
            self.rt.log(f"training on {self.device}; {restored:,} transitions restored, enough to train on")
        else:
            self.rt.log(f"training on {self.device}; waiting for {self.config.learning_starts} transitions")
        if self.config.replay:
            self.rt.log(
                f"the replay server at {self.config.replay} runs on its own: checkpoints hold the "
                "learner's state, not the replay memory"
            )
        self.publish()
        training_since = None  # wait_fraction counts from the first batch on
        while not self.rt.should_stop():
            self._request_batches()
            t0 = time.monotonic()
            ready = self.dealer.poll(POLL_MS, zmq.POLLIN)
            if training_since is not None:
                self.wait_s += time.monotonic() - t0
            if ready:
                if training_since is None:
                    training_since = time.monotonic()
                self._receive(train=True)
            self._idle_duties(time.monotonic() - training_since if training_since is not None else 0.0)

    def _receive(self, train: bool) -> dict | None:
        """Take one message from the replay server; batches are trained on (or dropped)."""
        msg = None
        try:
            frames = self.dealer.recv_multipart(copy=False)  # big arrays arrive as their own parts
            msg = decode_parts(
                [f.buffer for f in frames],
                self.config.max_message_bytes,
                expect=("batch", "batch_shared", "batch_mirror", "snapshot_done", "frame_ring", "stats"),
            )
            if msg["t"] in BATCHES:
                self.in_flight = max(0, self.in_flight - 1)
                ring = self.batches.ring
                msg["batches"] = self.batches.batches(msg)  # first: a batch_mirror's frames are kept even if
                _check_values(msg, self.config.num_actions)  # its values are bad (the server counts them sent)
                if msg["t"] == "batch_shared" and (ring is None or msg["ring"] != ring.token):
                    raise ProtocolError(f"a batch from frame ring {msg['ring']}, which this learner does not map")
            elif msg["t"] == "frame_ring" and not self.batches.use_shared:
                raise ProtocolError("a frame ring this learner did not ask for")
        except ProtocolError as exc:
            if msg is None:  # unreadable, most likely the answer to a sample request: ask again
                self.in_flight = max(0, self.in_flight - 1)
            self.dropped += 1
            if self._drop_log.due():
                self.rt.log(f"dropped a bad message from the replay server ({exc}); {self.dropped} dropped so far")
            return None
        if msg["t"] == "frame_ring":
            self.batches.on_frame_ring(msg)
        elif msg["t"] == "stats":
            self.replay_stats = msg["stats"]
            self._maybe_checkpoint()
        elif msg["t"] in BATCHES and train:
            self._train(msg)
        return msg

    def _request_batches(self) -> None:
        connects = self.rt.transport.connects(self.dealer)
        if connects > self._replay_connects or self.batches.reattach:
            if connects > self._replay_connects:  # (re)connected: a restarted replay server lost our requests
                if self._replay_connects:
                    self.in_flight = 0
                self._replay_connects = connects
            attach = self.batches.attach_request()
            if attach is not None:
                self.dealer.send(attach)
        request = self.batches.sample_request(self.learner.beta())
        while self.in_flight < self.config.prefetch_batches:
            self.dealer.send(request)
            self.in_flight += 1

    def _train(self, msg: dict) -> None:
        """One update per batch in the message; then their priorities go back, on the next request."""
        updates_before = self.learner.updates
        self.replay_stats = msg["stats"]
        ids, priorities = [], []
        for batch in msg["batches"]:
            if self.learner.updates == 0:
                self.rt.log("first batch arrived: training")
            metrics, new = self.learner.step(
                batch["frames"], batch["actions"], batch["rewards"], batch["bootstraps"], batch["weights"]
            )
            ids.append(batch["ids"])
            priorities.append(new)
            self._window["loss"] += metrics["loss"]
            self._window["q_mean"] += metrics["q_mean"]
            self._window["n"] += 1
        if not ids:
            return  # all torn, or from a ring we no longer map: the loop asks again
        ids, priorities = np.concatenate(ids), np.concatenate(priorities)
        try:
            if self.in_flight < self.config.prefetch_batches:
                self.dealer.send(self.batches.sample_request(self.learner.beta(), ids, priorities), zmq.NOBLOCK)
                self.in_flight += 1
            else:
                self.dealer.send(encode("priorities", ids=ids, priorities=priorities), zmq.NOBLOCK)
        except zmq.Again:
            self.dropped_priorities += len(ids)  # those transitions keep their old priorities; counted, not silent
        every = self.config.publish_every
        if self.learner.updates // every > updates_before // every:
            self.publish()
        self._maybe_checkpoint()  # after the priorities went: a snapshot includes them

    def _idle_duties(self, elapsed: float) -> None:
        """Periodic work between batches: re-publish weights for late joiners, report progress, and before
        the first batch ask how far the run is (batches carry that later), for the checkpoint schedule."""
        if time.monotonic() - self.last_publish > REPUBLISH_S:
            self.publish()
        if self.rt.progress_due():
            self.rt.check_links()
            self._log_progress(elapsed)
            if not self.learner.updates and self.config.checkpoint_every:
                try:
                    self.dealer.send(encode("ask_stats"), zmq.NOBLOCK)
                except zmq.Again:
                    pass  # the replay server is not there yet: the next report asks again

    def publish(self) -> None:
        """Broadcast the online weights; a re-send of unchanged weights keeps its version."""
        if self.learner.updates != self._published_updates or not self.weights_version:
            self.weights_version += 1
            self._published_updates = self.learner.updates
            self._weights_msg = encode(
                "weights",
                weights_version=self.weights_version,
                weights_updates=self.learner.updates,
                tensors=weights_to_arrays(self.learner.online),
                run=self.replay_stats.run(),
            )
        self.pub.send(self._weights_msg)
        self.last_publish = time.monotonic()

    def _log_progress(self, elapsed: float) -> None:
        updates = self.learner.updates
        now = time.monotonic()
        rate = (updates - self._rate_mark[1]) / max(now - self._rate_mark[0], 1e-9)
        self._rate_mark = (now, updates)
        n = self._window["n"]
        if n:
            self._losses = (self._window["loss"] / n, self._window["q_mean"] / n)
        self._wait_fraction = self.wait_s / elapsed if elapsed > 0 else 0.0
        progress = self._progress()
        if n:
            self.metrics.scalar("Loss/Optimize", progress.loss, updates)
            self.metrics.scalar("Q_Value/Mean", progress.q_mean, updates)
            self.metrics.scalar("Learning_Rate", progress.lr, updates)
            self.metrics.scalar("Learner/UpdatesPerSec", rate, updates)
            self.metrics.scalar("Replay/Size", self.replay_stats.size, updates)
            inserted = self.replay_stats.inserted
            if inserted:
                self.metrics.scalar("Replay/SamplesPerInsert", self.replay_stats.sampled / inserted, updates)
            self._window = {"loss": 0.0, "q_mean": 0.0, "n": 0}
        self.rt.report("progress", progress)

    def _progress(self) -> LearnerProgress:
        return LearnerProgress(
            updates=self.learner.updates,
            weights_version=self.weights_version,
            dropped=self.dropped,
            torn_batches=self.batches.torn,
            mirror_frames=self.batches.mirror_frames,
            mirror_restarts=self.batches.mirror_restarts,
            dropped_priorities=self.dropped_priorities,
            lr=self.learner.optimizer.lr,
            wait_fraction=self._wait_fraction,
            loss=self._losses[0],
            q_mean=self._losses[1],
        )

    # --- checkpoints -------------------------------------------------------------------------
    # Protocol for one consistent moment: (1) ask the replay server for a snapshot on the socket
    # that carried every priority update sent so far, so it arrives after them; the server forks,
    # and the snapshot is the buffer at that instant; (2) batches that arrive meanwhile are dropped
    # untrained (sampling leaves the buffer as it was), so the learner's state matches the snapshot;
    # (3) once the snapshot is on disk, write the .pth naming it. Actors never wait.
    def counters(self) -> CheckpointCounters:
        """The checkpoint's counters now, with no replay memory named."""
        stats = self.replay_stats
        return CheckpointCounters(
            updates=self.learner.updates,
            episodes=stats.episodes,
            env_steps=stats.env_steps,
            best_reward=stats.best_reward,
            replay_size=stats.size,
            weights_version=self.weights_version,
        )

    def _maybe_checkpoint(self) -> None:
        every = self.config.checkpoint_every
        episodes = self.replay_stats.episodes
        if not every or episodes // every <= self._checkpointed_at_episode // every:
            return
        now = time.monotonic()
        if now < self._next_checkpoint_at:
            if not self._spacing_said:
                self._spacing_said = True
                self.rt.log(
                    f"checkpoints come at most every {self._next_checkpoint_at - self._last_started:.0f} s "
                    f"here, so saving keeps under {self.config.checkpoint_time_share:.0%} of the learner's time"
                )
            return
        self._checkpointed_at_episode = episodes
        self.checkpoint("checkpoint")
        self._last_started, done = now, time.monotonic()
        self._next_checkpoint_at = done + (done - now) / self.config.checkpoint_time_share  # T / share after it

    def checkpoint(self, base: str, final: bool = False) -> str:
        """Write <base>.pth naming its replay snapshot; returns the .pth path ("" if none was written).

        A periodic checkpoint whose snapshot fails is skipped: the previous one stays whole. The final one
        names the last good snapshot instead (the run's counters as that snapshot saw them), and says so."""
        started = time.monotonic()
        # A replay server started on its own (--replay) writes into its own run folder, maybe on another
        # machine, so the checkpoint could not name its snapshot: there the checkpoint is the learner's state.
        # Orphaned (the launcher was killed), the replay server is stopping too: save what is ours.
        with_replay = not self.config.replay and not (final and self.rt.orphaned())
        replay = None if self.config.replay else self._replay
        why = "the launcher is gone, so is the replay server"
        if with_replay:
            # A unique name: a new snapshot never overwrites the one the previous .pth names.
            done, why = self._request_snapshot(
                snapshot_name(base, time.time_ns()), started + FINAL_SNAPSHOT_S if final else None
            )
            if done is not None:
                self.replay_stats = done["stats"]
                replay = dataclasses.replace(
                    self.counters(), replay_file=done["name"], replay_updates=self.learner.updates
                )
            elif not final:
                self._failed(f"{base}.pth not saved: {why}; the previous checkpoint stays, training goes on")
                self._remove_unnamed_snapshots()
                return ""
        counters = self.counters() if replay is None else self.counters().with_snapshot_of(replay)
        path = os.path.join(self.run_dir, f"{base}.pth")
        try:
            self.learner.save(path, as_map(counters))
        except OSError as exc:
            self._failed(f"could not write {os.path.basename(path)}: {exc.strerror}; training goes on", always=final)
            self._remove_unnamed_snapshots()  # the new snapshot no .pth names: a full disk is not left full
            return ""
        self._named[base] = counters.replay_file
        fresh, self._replay = replay is not None and replay is not self._replay, replay
        self._remove_unnamed_snapshots()
        seconds = f"in {time.monotonic() - started:.1f} s"
        if fresh:
            self.rt.log(f"saved {base}.pth with replay memory ({counters.replay_size:,} transitions) {seconds}")
        elif replay is not None:
            self.rt.log(
                f"saved {base}.pth with the replay memory of update {replay.replay_updates:,} "
                f"({counters.replay_size:,} transitions, the newest complete one) {seconds}: {why}"
            )
        else:
            self.rt.log(
                f"saved {base}.pth WITHOUT replay memory {seconds}" + ("" if self.config.replay else f": {why}")
            )
        return path

    def _request_snapshot(self, name: str, deadline: float | None) -> tuple[dict | None, str]:
        """Ask the replay server for a snapshot and wait for it as long as its file grows (until `deadline` if
        given). Returns (the server's answer, "") or (None, why not)."""
        self.dealer.send(encode("snapshot", name=name))
        size, grew = -1, time.monotonic()
        while True:
            if self.dealer.poll(POLL_MS, zmq.POLLIN):
                msg = self._receive(train=False)
                if msg is not None and msg["t"] == "snapshot_done" and msg["name"] == name:
                    return (msg, "") if msg["ok"] else (None, f"replay snapshot failed: {msg.get('text', '')}")
            now_size = _partial_bytes(self.run_dir, name)
            now = time.monotonic()
            if now_size != size:
                size, grew = now_size, now
            if deadline is not None and now >= deadline:
                return None, (
                    f"the replay snapshot did not finish in the {FINAL_SNAPSHOT_S:.0f} s the stop allows "
                    f"({max(size, 0) / 1e6:,.0f} MB written)"
                )
            if now - grew > SNAPSHOT_STALL_S:
                return None, f"the replay snapshot made no progress for {SNAPSHOT_STALL_S:.0f} s"

    def _failed(self, text: str, always: bool = False) -> None:
        """Say that a checkpoint failed: the first time, then at most once per 30 s, with a count."""
        self._failures += 1
        if self._failure_log.due() or always:
            count = f" ({self._failures} checkpoint failures so far)" if self._failures > 1 else ""
            self.rt.log(text + count)

    def _remove_unnamed_snapshots(self) -> None:
        """Remove the snapshots (and partial ones) that no checkpoint on disk names: never the last good one."""
        named = set()
        for base in ("checkpoint", "checkpoint_final"):
            if base not in self._named:  # written before this session: read which snapshot it names
                self._named[base] = _named_snapshot(os.path.join(self.run_dir, f"{base}.pth"))
            named.add(self._named[base])
        for name in os.listdir(self.run_dir):
            if SNAPSHOT_FILE.match(name) and name not in named:
                try:
                    os.remove(os.path.join(self.run_dir, name))
                except OSError:
                    pass

    def restore(self, path: str) -> None:
        saved = self.learner.restore(path)
        try:
            counters = CheckpointCounters.from_saved(saved)
        except ValueError as exc:
            raise CheckpointError(f"{path}: damaged checkpoint ({exc})") from None
        if "replay_updates" not in saved:  # older checkpoints: their snapshot was taken with them
            counters = dataclasses.replace(counters, replay_updates=self.learner.updates)
        self.replay_stats = ReplayStats(  # until the replay server's first answer
            episodes=counters.episodes,
            env_steps=counters.env_steps,
            best_reward=counters.best_reward,
            size=counters.replay_size if counters.replay_file else 0,
        )
        self._checkpointed_at_episode = counters.episodes
        self._replay = counters if counters.replay_file else None
        self.weights_version = counters.weights_version
        self._published_updates = -1
        self.rt.log(f"resumed from {os.path.basename(path)} at update {self.learner.updates:,}")

    def close(self) -> None:
        path = self.checkpoint("checkpoint_final", final=True)
        self.pub.send(encode("bye", checkpoint=os.path.basename(path)))  # actors on other machines play on
        self.rt.report("progress", self._progress())
        self.batches.close()
        self.metrics.close()


def _check_values(msg: dict, num_actions: int) -> None:
    """A batch's values must be ones a gradient step can take: NaN weights or rewards would poison the
    network, and an action past the last a crash in the gather. Raises ProtocolError."""
    if msg["actions"].size and int(msg["actions"].max()) >= num_actions:
        raise ProtocolError(f"action {int(msg['actions'].max())} of {num_actions}")
    for name in ("rewards", "bootstraps", "weights"):
        if not np.isfinite(msg[name]).all():
            raise ProtocolError(f"{name} not all finite")
    if (msg["weights"] < 0).any() or (msg["bootstraps"] < 0).any() or (msg["bootstraps"] > 1).any():
        raise ProtocolError("negative weights, or bootstraps outside 0..1")


def _partial_bytes(folder: str, name: str) -> int:
    """The bytes in snapshot `name`'s partial files: its own and its frame file's (.tmp) grow as it writes."""
    total = 0
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if entry.name == f"{name}.tmp" or ((frame := FRAME_FILE.match(entry.name)) and frame.group(3)):
                with contextlib.suppress(OSError):
                    total += entry.stat().st_size
    return total


def _named_snapshot(path: str) -> str:
    """The replay snapshot a checkpoint file names ("" if none, or if the file is missing or unreadable)."""
    if not os.path.exists(path):
        return ""
    try:
        return CheckpointCounters.from_saved(load_checkpoint(path).get("counters", {})).replay_file
    except (CheckpointError, ValueError):
        return ""


def main(runtime: RoleRuntime, run_dir: str) -> None:
    service = LearnerService(runtime, run_dir)
    if runtime.start:
        service.restore(runtime.start)
    try:
        service.run()
    finally:
        service.close()
