"""The replay server process: stores actors' transitions, serves prioritized batches to the learner.

Sockets (addresses from the config, types and options from common/topology.py):
- replay_in, PULL (bound): actors push "transitions" chunks and "episode" results.
- replay_sample, ROUTER (bound): the learner's DEALER sends "sample" (answered with "batch", or with
  "batch_shared" for a learner on this machine that maps the frame ring: "attach_frames" tells it
  where, or with "batch_mirror" for a learner that keeps a copy of the ring: see Mirrors), which may
  carry the last batch's priorities, and "priorities" (no answer). Sample
  requests that arrive before `learning_starts` transitions are stored wait, unanswered, until there
  are enough, and (pause_without_actors) while no actor is connected, so a learner whose actors
  stopped waits for new experience.
Bad messages are dropped and counted, never fatal.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np
import zmq

from common.addresses import bind_addresses
from common.config import MAX_SAMPLE_BATCH, frames_per_message
from common.log_limit import LogLimit
from common.protocol import ProtocolError, decode, encode, encode_parts
from common.records import ReplayStats, as_map
from common.run_files import SNAPSHOT_FILE
from common.runtime import RoleRuntime
from common.topology import bind_socket
from common.transport import SETTLED_S
from replay_server.buffer import ChunkError, PrioritizedReplay
from replay_server.rate_limit import RateLimiter
from replay_server.snapshot import (
    Segment,
    SnapshotError,
    frame_files_named,
    frame_plan,
    read_snapshot,
    remove_unused_frame_files,
    start_snapshot,
)

MAX_PENDING = 64  # sample requests kept waiting (a learner re-asks after a restart of either side)
MAX_PENDING_PER_PEER = 8  # ... of them from one peer: a flood from one socket cannot crowd out the learner's
POLL_MS = 100
PAUSE_NOTICE_S = 10.0  # say that sampling paused only once it lasts (not during a normal stop, <= 10 s)
MAX_MIRRORS = 8  # learners' frame mirrors the server keeps track of (least recently used forgotten)
LAST_TRANSITIONS_S = 0.5  # at the stop: time to store what the actors flushed (the stop allows 7 s in all)


@dataclass
class SnapshotWrite:
    """A snapshot being written: for whom, into which file, by which child, and what it will name."""

    learner: bytes
    name: str
    pid: int | None
    stats: ReplayStats
    fingerprint: str
    frame_files: list[Segment]


class Mirrors:
    """What the frame mirror of each learner that keeps one holds (learner/replay_batches.py): a learner on
    another machine cannot map the frame ring, so it keeps a copy, and each frame is sent to it once per
    time it is written instead of with every batch that names it (each frame is in the stacks of about
    2S transitions, obs and next obs, each sampled samples_per_insert times on average).

    Per mirror token (a learner makes a new one for each (re)connection, and whenever its copy lacks a
    frame the server thought sent), the number of the frame sent into each ring slot (-1: none), as
    the learner stores them. An unknown token starts from nothing, so a new or restarted learner is
    sent every frame it needs; a reply that could not be sent forgets its token (the learner, missing
    frames, then starts a new one). At most MAX_MIRRORS tokens, 8 bytes per ring frame each; the least
    recently used is forgotten first. Forgetting only costs frames sent again."""

    def __init__(self, ring_frames: int):
        self.ring_frames = ring_frames
        self._held: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def to_send(self, token: int, frame_numbers: np.ndarray) -> np.ndarray:
        """The numbers, sorted and once each, of the frames among these that mirror `token` lacks; from now
        on they count as sent to it."""
        held = self._held.pop(token, None)
        if held is None:
            held = np.full(self.ring_frames, -1, dtype=np.int64)
            while len(self._held) >= MAX_MIRRORS:
                self._held.popitem(last=False)
        self._held[token] = held  # now the most recently used
        numbers = frame_numbers.ravel()
        lacking = numbers[held[numbers % self.ring_frames] != numbers]  # usually few or none: no sort
        new = np.unique(lacking)  # live frames: within ring_frames of each other, so one per slot
        held[new % self.ring_frames] = new
        return new

    def forget(self, token: int) -> None:
        self._held.pop(token, None)


class ReplayServer:
    def __init__(self, runtime: RoleRuntime, run_dir: str, resume_snapshot: str | None = None):
        self.rt = runtime
        self.run_dir = run_dir
        c = runtime.config
        self.config = c
        self.buffer = PrioritizedReplay(c.replay_capacity, c.frame_size, c.frame_stack, c.per_alpha, c.num_actions)
        self.rng = np.random.default_rng(c.seed + 10_000)
        self.limiter = RateLimiter(c.learning_starts, c.samples_per_insert, c.spi_tolerance, c.actors_wait_for_learner)
        self.pull = bind_socket(runtime.transport, c, "replay_in")
        self.router = bind_socket(runtime.transport, c, "replay_sample")  # ROUTER_MANDATORY (topology): see _send
        # (peer, batch size, beta, shared, mirror token or 0) of waiting requests; the oldest go first
        self.pending: deque[tuple[bytes, int, float, bool, int]] = deque()
        self.mirrors = Mirrors(self.buffer.frame_capacity)
        self.counters = {"episodes": 0, "env_steps": 0, "sampled": 0, "dropped": 0, "batches": 0, "undeliverable": 0}
        self.best_reward = float("-inf")
        self._drop_log = LogLimit()
        self.snapshot: SnapshotWrite | None = None
        self._last_snapshot = ("", "", 0)  # (file name, fingerprint, inserted) of the last complete snapshot
        self._frame_files: list[Segment] = []  # the frame files in run_dir the last complete snapshot names
        self.actors = 0  # connected actor processes
        self._last_actor_message = float("-inf")
        self._paused_since: float | None = None
        self._pause_noticed = False
        if resume_snapshot:
            self._restore(resume_snapshot)
        self.limiter.observe(len(self.buffer), self.buffer.inserted)  # no rate-limit credit for restored data

    def _restore(self, path: str) -> None:
        saved = read_snapshot(path, self.buffer)
        if os.path.dirname(os.path.abspath(path)) == os.path.abspath(self.run_dir):
            self._frame_files = frame_files_named(path)  # a resume goes on in its run folder: build on them
        if isinstance(saved.get("rng"), dict):
            self.rng.bit_generator.state = saved["rng"]  # sampling continues where it left off
        for key in ("episodes", "env_steps"):
            self.counters[key] = int(saved.get(key, 0))
        self.best_reward = (
            float(saved.get("best_reward", float("-inf"))) if self.counters["episodes"] else float("-inf")
        )
        self.rt.log(f"restored {len(self.buffer):,} transitions from {os.path.basename(path)}")

    # --- loop --------------------------------------------------------------------------------
    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.pull, zmq.POLLIN)
        poller.register(self.router, zmq.POLLIN)
        c = self.config
        self.rt.log(f"listening on {' and '.join(bind_addresses(c, 'replay_in') + bind_addresses(c, 'replay_sample'))}")
        while not self.rt.should_stop():
            # Pinned ratio, the learner behind: the actors wait. Not once the run is stopping: their last
            # chunks must arrive before their sockets give up on them (the actor side's linger).
            actors_wait = self.limiter.inserts_wait(self.buffer.inserted) and not self.rt.run_stopping()
            poller.modify(self.pull, 0 if actors_wait else zmq.POLLIN)
            events = dict(poller.poll(POLL_MS))
            if self.pull in events:
                self._drain(self.pull, self._on_actor_message, limit=64)
                self.limiter.observe(len(self.buffer), self.buffer.inserted)
            if self.router in events:
                self._drain(self.router, self._on_learner_message, limit=64)
            self._check_actors()
            self._serve_pending()
            self._check_snapshot()
            if self.rt.progress_due():
                self.rt.report("progress", self.stats())
        self._take_last_transitions()
        self._check_snapshot()
        self._end_snapshot()
        self._say_what_the_last_snapshot_lacks()
        self._remove_unused_frame_files()  # the learner has named its last snapshot (it stops first)

    def _take_last_transitions(self) -> None:
        """The actors stop first and flush what they hold; a pinned ratio may have left those messages
        queued here. With the actors gone there is nothing left to hold back: store them all, so every
        env step the run counted is in the buffer and its stats (summary.json). The learner's final checkpoint
        came before (it stops first), so a --resume starts without these last few."""
        deadline = time.monotonic() + LAST_TRANSITIONS_S  # actors of another launcher may still be sending
        while self.pull.poll(0, zmq.POLLIN) and time.monotonic() < deadline:
            self._drain(self.pull, self._on_actor_message, limit=64)

    def _say_what_the_last_snapshot_lacks(self) -> None:
        """Transitions stored after the last complete snapshot (actors of another launcher still sending
        while this side stopped) are in no checkpoint: say how many, so a --resume's gap is known."""
        name, _, inserted = self._last_snapshot
        if name and self.buffer.inserted > inserted:
            self.rt.log(
                f"{self.buffer.inserted - inserted:,} transition(s) arrived after the last replay snapshot "
                f"({name}): a --resume from it starts without them"
            )

    def _check_actors(self) -> None:
        """Count connected actors; sampling pauses while there are none (pause_without_actors)."""
        self.rt.check_links()
        self.actors = self.rt.transport.peers(self.pull)
        # A new connection counts only once settled, but one that already delivers is an actor's.
        delivering = time.monotonic() - self._last_actor_message < SETTLED_S
        if self.actors or delivering or not self.config.pause_without_actors:
            if self._pause_noticed:
                self.rt.log(f"{self.actors} actor(s) connected: serving batches again")
            self._paused_since, self._pause_noticed = None, False
        elif self._paused_since is None:
            self._paused_since = time.monotonic()
        elif (
            not self._pause_noticed
            and time.monotonic() - self._paused_since > PAUSE_NOTICE_S
            and len(self.buffer) >= self.config.learning_starts
        ):
            self._pause_noticed = True
            self.rt.log("no actor connected: serving no batches until one is (the learner waits)")

    def _drain(self, sock: zmq.Socket, handler, limit: int) -> None:
        for _ in range(limit):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            try:
                handler(parts)
            except (ProtocolError, ChunkError) as exc:
                self._drop(str(exc))
            except Exception as exc:  # one no check foresaw: that message is lost, never the server
                self._drop(f"{type(exc).__name__} while handling it: {exc}")

    def _drop(self, reason: str) -> None:
        """Count a bad message; say so for the first one, then at most every 30 s (LogLimit)."""
        self.counters["dropped"] += 1
        if self._drop_log.due():
            self.rt.log(f"dropped a bad message ({reason}); {self.counters['dropped']} dropped so far")

    # --- actor side ----------------------------------------------------------------------------
    def _on_actor_message(self, parts: list[bytes]) -> None:
        if len(parts) != 1:
            raise ProtocolError(f"expected 1 message part, got {len(parts)}")
        msg = decode(parts[0], self.config.max_message_bytes, expect=("transitions", "episode"))
        self._last_actor_message = time.monotonic()
        if msg["t"] == "transitions":
            added = self.buffer.add_chunk(
                msg["frames"], msg["stack"], msg["actions"], msg["rewards"], msg["bootstraps"]
            )
            self.counters["env_steps"] += added
        else:
            self.counters["episodes"] += 1
            self.best_reward = max(self.best_reward, msg["reward"])

    # --- learner side ----------------------------------------------------------------------------
    def _on_learner_message(self, parts: list[bytes]) -> None:
        if len(parts) != 2:
            raise ProtocolError(f"expected 2 message parts on the sample socket, got {len(parts)}")
        identity, payload = parts
        c = self.config
        msg = decode(
            payload, c.max_message_bytes, expect=("sample", "priorities", "snapshot", "attach_frames", "ask_stats")
        )
        if msg["t"] == "sample":
            if not 1 <= msg["batch_size"] <= MAX_SAMPLE_BATCH or not 0.0 <= msg["beta"] <= 1.0:
                raise ProtocolError("sample: batch_size or beta out of range")
            if ("ids" in msg) != ("priorities" in msg):
                raise ProtocolError("sample: ids and priorities come together")
            if "ids" in msg:
                try:
                    self.buffer.update_priorities(msg["ids"], msg["priorities"])
                except ChunkError as exc:  # bad priorities (NaN after a diverged update, say) are
                    self._drop(str(exc))  # dropped, but the request for a batch still stands
            shared = msg.get("shared", False) and self.buffer.ring.shared
            mirror = 0 if shared else msg.get("mirror", 0)
            if (
                not shared
                and not frames_per_message(msg["batch_size"], c.frame_stack, c.frame_size, c.max_message_bytes)
                >= msg["batch_size"]
            ):
                raise ProtocolError(
                    f"sample: {msg['batch_size']} transitions with their frames exceed max_message_bytes"
                )
            if len(self.pending) >= MAX_PENDING or sum(p[0] == identity for p in self.pending) >= MAX_PENDING_PER_PEER:
                raise ProtocolError("sample: too many requests waiting (the newest is dropped, the waiting ones stay)")
            self.pending.append((identity, msg["batch_size"], msg["beta"], shared, mirror))
        elif msg["t"] == "priorities":
            self.buffer.update_priorities(msg["ids"], msg["priorities"])
        elif msg["t"] == "attach_frames":
            self._send(identity, [encode("frame_ring", **self.buffer.ring.describe())])
        elif msg["t"] == "ask_stats":
            self._send(identity, [encode("stats", stats=self.stats())])
        else:
            self._start_snapshot(identity, msg["name"])

    # --- snapshots (see learner/service.py for the protocol) --------------------------------------
    def _start_snapshot(self, identity: bytes, name: str) -> None:
        if not SNAPSHOT_FILE.match(name) or name.endswith(".tmp"):  # the learner's names only: never a path
            raise ProtocolError(f"snapshot: bad file name {name[:80]!r}")
        if self.snapshot is not None:
            self._reply_snapshot(identity, name, False, self.stats(), "another snapshot is in progress")
            return
        stats = self.stats()
        counters = {**as_map(stats), "rng": self.rng.bit_generator.state}
        fingerprint = self._fingerprint(counters)
        last, last_fingerprint, _ = self._last_snapshot
        if fingerprint == last_fingerprint:  # nothing changed (a checkpoint on the stop boundary): the same file
            with contextlib.suppress(OSError):  # under the new name, not a second copy
                os.link(os.path.join(self.run_dir, last), os.path.join(self.run_dir, name))
                self._last_snapshot = (name, fingerprint, stats.inserted)
                self._reply_snapshot(identity, name, True, stats, "")
                return
        self._remove_unused_frame_files()  # those of checkpoints since replaced
        frame_files = frame_plan(self.buffer, self._frame_files)
        try:
            pid = start_snapshot(self.buffer, counters, os.path.join(self.run_dir, name), self._frame_files)
        except OSError as exc:
            self._reply_snapshot(identity, name, False, stats, f"cannot write {name}: {exc.strerror}")
            return
        self.snapshot = SnapshotWrite(identity, name, pid, stats, fingerprint, frame_files)

    def _remove_unused_frame_files(self) -> None:
        try:
            remove_unused_frame_files(self.run_dir, keep=self._frame_files)
        except (SnapshotError, OSError) as exc:
            self.rt.log(f"kept every replay frame file for now: {exc}")

    def _fingerprint(self, counters: dict) -> str:
        """What a snapshot of the buffer now would hold, in brief: its contents change only by inserts (the
        heads) and priorities; the counters include the sampling RNG's state."""
        arrays = self.buffer.state_arrays()
        described = {k: v for k, v in counters.items() if k != "actors"}
        digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
        for key in ("heads", "priorities", "max_priority"):
            digest.update(np.ascontiguousarray(arrays[key]).tobytes())
        return digest.hexdigest()

    def _check_snapshot(self) -> None:
        if self.snapshot is None:
            return
        writing = self.snapshot
        if writing.pid is not None:
            done, status = os.waitpid(writing.pid, os.WNOHANG)
            if not done:
                return
            self.buffer.ring.snapshot_end()
            ok = os.waitstatus_to_exitcode(status) == 0
        else:
            ok = True
        self.snapshot = None
        if ok:
            self._last_snapshot = (writing.name, writing.fingerprint, writing.stats.inserted)
            self._frame_files = writing.frame_files
        text = "" if ok else f"writing {writing.name} failed (disk full?)"
        self._reply_snapshot(writing.learner, writing.name, ok, writing.stats, text)

    def _end_snapshot(self) -> None:
        """At the stop the learner has already stopped (the launcher stops it first) and named the last complete
        snapshot: an unfinished one is of no use, so its writer is ended and its partial file removed."""
        if self.snapshot is None:
            return
        name, pid = self.snapshot.name, self.snapshot.pid
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            self.buffer.ring.snapshot_end()
        with contextlib.suppress(OSError):
            os.remove(os.path.join(self.run_dir, f"{name}.tmp"))  # (a partial frame file goes with the unused)
        self.snapshot = None
        self.rt.log(f"stopped writing the unfinished replay snapshot {name}")

    def _reply_snapshot(self, identity: bytes, name: str, ok: bool, stats: ReplayStats, text: str) -> None:
        """Answer the learner (which reports a failure to the user)."""
        self._send(identity, [encode("snapshot_done", name=name, ok=ok, stats=stats, text=text)])

    def _send(self, identity: bytes, parts: list) -> bool:
        """A reply to one peer; one that cannot go (the peer is gone, or not reading) is counted
        (stats: undeliverable), never waited for: that learner asks again. Returns whether it went."""
        try:
            self.router.send_multipart([identity, *parts], zmq.NOBLOCK, copy=False)
        except zmq.ZMQError:  # zmq.Again (its queue is full), or EHOSTUNREACH (gone: ROUTER_MANDATORY)
            self.counters["undeliverable"] += 1
            return False
        return True

    def _serve_pending(self) -> None:
        if self._paused_since is not None:
            return
        while self.pending and self.limiter.can_sample(self.buffer.inserted, self.pending[0][1]):
            identity, batch_size, beta, shared, mirror = self.pending.popleft()
            self.limiter.took(batch_size)
            batch = self.buffer.sample(batch_size, beta, self.rng, with_frames=not (shared or mirror))
            self.counters["sampled"] += batch_size
            self.counters["batches"] += 1
            fields = dict(
                ids=batch.ids,
                actions=batch.actions,
                rewards=batch.rewards,
                bootstraps=batch.bootstraps,
                weights=batch.weights,
                stats=self.stats(),
            )
            if shared:
                parts = [
                    encode("batch_shared", frame_numbers=batch.frame_numbers, ring=self.buffer.ring.token, **fields)
                ]
            elif mirror:
                ring = self.buffer.ring
                new = self.mirrors.to_send(mirror, batch.frame_numbers)
                parts = encode_parts(
                    "batch_mirror",
                    {"frames": ring.frames[new % ring.count]},  # only the frames this mirror lacks
                    frame_numbers=batch.frame_numbers,
                    ring=ring.token,
                    ring_frames=ring.count,
                    mirror=mirror,
                    new_numbers=new,
                    **fields,
                )
                if not self._send(identity, parts):
                    self.mirrors.forget(mirror)  # those frames never went: start over with this mirror
                continue
            else:
                parts = encode_parts("batch", {"frames": batch.frames}, **fields)  # frames as their own part
            self._send(identity, parts)

    def stats(self) -> ReplayStats:
        return ReplayStats(
            size=len(self.buffer),
            inserted=self.buffer.inserted,
            actors=self.actors,
            **self.counters,
            best_reward=self.best_reward if self.counters["episodes"] else 0.0,
        )


def main(runtime: RoleRuntime, run_dir: str) -> None:
    server = ReplayServer(runtime, run_dir, runtime.start or None)
    started = time.monotonic()
    server.run()
    runtime.report("progress", server.stats())
    runtime.log(
        f"stopped after {time.monotonic() - started:.0f} s: {server.buffer.inserted} transitions "
        f"stored, {server.counters['dropped']} bad messages dropped"
    )
