"""The learner process: pulls prioritized batches, trains, returns priorities, publishes weights.

Sockets (addresses from the config):
- replay_sample, DEALER (connects): keeps `prefetch_batches` "sample" requests in flight so the
  next batch is on its way while this one trains; "priorities" are sent without waiting.
- weights, PUB (bound): "weights" messages after every `publish_every` updates, at start, and
  again every few seconds so actors that join late get them.
Checkpoints: checkpoint.pth every `checkpoint_every_episodes` episodes, checkpoint_final.pth on stop.
"""
from __future__ import annotations

import os
import time

import torch
import zmq
from torch.utils.tensorboard import SummaryWriter

from common.network import weights_to_arrays
from common.protocol import ProtocolError, decode, encode
from common.runtime import RoleRuntime
from learner.device import pick_device
from learner.learning import DQNLearner

POLL_MS = 100
REPUBLISH_S = 5.0


class LearnerService:
    def __init__(self, runtime: RoleRuntime, run_dir: str):
        self.rt = runtime
        c = self.config = runtime.config
        self.run_dir = run_dir
        self.device = pick_device(c.device)
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 2) - c.num_actors))
        self.learner = DQNLearner(c, self.device)
        self.dealer = runtime.transport.socket(zmq.DEALER, connect=c.address("replay_sample"), hwm=100)
        self.pub = runtime.transport.socket(zmq.PUB, bind=c.address("weights"), hwm=2)
        self.writer = SummaryWriter(run_dir, filename_suffix=".learner")
        self.replay_stats: dict = {}
        self.weights_version = 0
        self._published_updates = 0
        self._weights_msg = b""
        self.last_publish = 0.0
        self.in_flight = 0
        self.dropped = 0
        self.wait_s = 0.0
        self._rate_mark = (time.monotonic(), 0)
        self._checkpointed_at_episode = 0
        self._window = {"loss": 0.0, "q_mean": 0.0, "n": 0}

    # --- loop --------------------------------------------------------------------------------
    def run(self) -> None:
        self.rt.log(f"training on {self.device}; waiting for {self.config.learning_starts} transitions")
        self.publish()
        started = time.monotonic()
        while not self.rt.should_stop():
            self._request_batches()
            t0 = time.monotonic()
            if not self.dealer.poll(POLL_MS, zmq.POLLIN):
                if self.learner.updates:
                    self.wait_s += time.monotonic() - t0
                self._idle_duties()
                continue
            if self.learner.updates:
                self.wait_s += time.monotonic() - t0
            payload = self.dealer.recv()
            self.in_flight -= 1
            try:
                batch = decode(payload, self.config.max_message_bytes, expect=("batch",))
            except ProtocolError as exc:
                self.dropped += 1
                self.rt.log(f"dropped a bad batch ({exc})")
                continue
            if self.learner.updates == 0:
                self.rt.log("first batch arrived: training")
                started = time.monotonic()
            self._train(batch)
            self._idle_duties(elapsed=time.monotonic() - started)

    def _request_batches(self) -> None:
        request = encode("sample", batch_size=self.config.batch_size, beta=self.learner.beta())
        while self.in_flight < self.config.prefetch_batches:
            self.dealer.send(request)
            self.in_flight += 1

    def _train(self, batch: dict) -> None:
        metrics, priorities = self.learner.step(batch["frames"], batch["actions"], batch["rewards"],
                                                batch["dones"], batch["weights"])
        try:
            self.dealer.send(encode("priorities", ids=batch["ids"], priorities=priorities), zmq.NOBLOCK)
        except zmq.Again:
            pass   # replay server gone or saturated; priorities are refreshed on the next sample
        self.replay_stats = batch["stats"]
        self._window["loss"] += metrics["loss"]
        self._window["q_mean"] += metrics["q_mean"]
        self._window["n"] += 1
        if self.learner.updates % self.config.publish_every == 0:
            self.publish()
        self._maybe_checkpoint()

    def _idle_duties(self, elapsed: float = 0.0) -> None:
        if time.monotonic() - self.last_publish > REPUBLISH_S:
            self.publish()
        if self.rt.progress_due():
            self._log_progress(elapsed)

    def publish(self) -> None:
        """Broadcast the online weights; a re-send of unchanged weights keeps its version."""
        if self.learner.updates != self._published_updates or not self.weights_version:
            self.weights_version += 1
            self._published_updates = self.learner.updates
            self._weights_msg = encode("weights", version=self.weights_version, updates=self.learner.updates,
                                       tensors=weights_to_arrays(self.learner.online))
        self.pub.send(self._weights_msg)
        self.last_publish = time.monotonic()

    def _log_progress(self, elapsed: float) -> None:
        updates = self.learner.updates
        now = time.monotonic()
        rate = (updates - self._rate_mark[1]) / max(now - self._rate_mark[0], 1e-9)
        self._rate_mark = (now, updates)
        values = {"updates": updates, "weights_version": self.weights_version, "dropped": self.dropped,
                  "lr": self.learner.optimizer.param_groups[0]["lr"],
                  "wait_fraction": self.wait_s / elapsed if elapsed > 0 else 0.0}
        n = self._window["n"]
        if n:
            values["loss"] = self._window["loss"] / n
            values["q_mean"] = self._window["q_mean"] / n
            self.writer.add_scalar("Loss/Optimize", values["loss"], updates)
            self.writer.add_scalar("Q_Value/Mean", values["q_mean"], updates)
            self.writer.add_scalar("Learning_Rate", values["lr"], updates)
            self.writer.add_scalar("Learner/UpdatesPerSec", rate, updates)
            self.writer.add_scalar("Replay/Size", self.replay_stats.get("size", 0), updates)
            inserted = self.replay_stats.get("inserted", 0)
            if inserted:
                self.writer.add_scalar("Replay/SamplesPerInsert", self.replay_stats.get("sampled", 0) / inserted, updates)
            self._window = {"loss": 0.0, "q_mean": 0.0, "n": 0}
        self.rt.report("progress", values)

    # --- checkpoints -------------------------------------------------------------------------
    def counters(self) -> dict:
        return {"episodes": int(self.replay_stats.get("episodes", 0)),
                "env_steps": int(self.replay_stats.get("env_steps", 0)),
                "best_reward": float(self.replay_stats.get("best_reward", 0.0)),
                "weights_version": self.weights_version}

    def _maybe_checkpoint(self) -> None:
        every = self.config.checkpoint_every_episodes
        episodes = int(self.replay_stats.get("episodes", 0))
        if every and episodes // every > self._checkpointed_at_episode // every:
            self._checkpointed_at_episode = episodes
            self.save("checkpoint.pth")

    def save(self, name: str) -> str:
        path = os.path.join(self.run_dir, name)
        try:
            self.learner.save(path, self.counters())
        except OSError as exc:
            self.rt.log(f"could not write {path}: {exc.strerror}; training goes on")
            return ""
        return path

    def close(self) -> None:
        path = self.save("checkpoint_final.pth")
        if path:
            self.rt.log(f"saved {path} after {self.learner.updates} updates")
        self.rt.report("progress", {"updates": self.learner.updates, "weights_version": self.weights_version,
                                    "dropped": self.dropped})
        self.writer.close()


def main(runtime: RoleRuntime, run_dir: str) -> None:
    service = LearnerService(runtime, run_dir)
    try:
        service.run()
    finally:
        service.close()
