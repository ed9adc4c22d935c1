"""Bad input at the learner's own socket: a fake replay server (a ROUTER bound here) answers the real
learner's sample requests with malformed and semantically wrong replies between good batches. Each bad
one is dropped and counted (summary.json: learner.dropped), and the learner trains on every good one."""

import contextlib
import math
import multiprocessing
import os
import platform
import time

import msgpack
import numpy as np
import pytest
import zmq

from common.addresses import local_address
from common.config import TEST_ENV_ID, Config
from common.protocol import PROTOCOL_VERSION, decode, decode_parts, encode, encode_parts
from common.shared_frames import FrameRing, stores_in_order
from common.records import ReplayStats, as_map
from common.runtime import role_entry
from tests.conftest import FAST_TEST_ENV, TEST_FRAME_SIZE
from tests.harness import free_base_port

pytestmark = pytest.mark.slow

BATCH = 32  # the default batch_size, which FAST_TEST_ENV keeps
SIZE = TEST_FRAME_SIZE  # the frame size of a FAST_TEST_ENV learner
STACK2 = 8  # obs and next obs, 4 frames each
ACTIONS = 7  # the test env's action count
STATS = ReplayStats(size=1000, inserted=1000, env_steps=1000)


def _fields(n: int, first_id: int, **changes) -> dict:
    fields = dict(
        ids=np.arange(first_id, first_id + n, dtype=np.int64),
        actions=(np.arange(n) % ACTIONS).astype(np.uint8),
        rewards=np.ones(n, np.float32),
        bootstraps=np.full(n, 0.99, np.float32),
        weights=np.ones(n, np.float32),
        stats=STATS,
    )
    return {**fields, **changes}


def _batch(first_id: int, n: int = BATCH, frames=None, **changes) -> list:
    """A "batch" as the replay server sends it: its frames as their own message part."""
    frames = np.full((n, STACK2, SIZE, SIZE), 7, np.uint8) if frames is None else frames
    return encode_parts("batch", {"frames": frames}, **_fields(n, first_id, **changes))


def _raw(msg_type: str, **fields) -> bytes:
    """A message with fields encode() would refuse or pack otherwise."""
    return msgpack.packb({"v": PROTOCOL_VERSION, "t": msg_type, **fields}, use_bin_type=True)


def _bad_batches(rng: np.random.Generator) -> list[list]:
    """Replies no learner may train on: each must be dropped and counted."""
    good = [bytes(p) for p in _batch(0)]
    nan, inf = np.float32(np.nan), np.float32(np.inf)
    return [
        [rng.bytes(100)],
        [b""],
        [good[0][:40]],
        [good[0]],  # garbage, truncated, frames missing
        [good[0], good[1][:-1]],
        [*good, b"extra part"],  # short frames part, a part too many
        [msgpack.packb([1, 2, 3])],
        [_raw("batch", v=2)],
        [encode("sample", batch_size=32, beta=0.5)],
        [encode("weights", weights_version=1, weights_updates=1, tensors={})],  # a type the learner never gets
        encode_parts("batch", {"frames": np.zeros((BATCH, STACK2, SIZE, SIZE), np.float32)}, **_fields(BATCH, 0)),
        _batch(0, frames=np.zeros((BATCH, 4, SIZE, SIZE), np.uint8)),  # obs without next obs
        _batch(0, frames=np.zeros((BATCH, STACK2, SIZE + 1, SIZE + 1), np.uint8)),  # another frame size
        _batch(0, actions=np.array(3, np.uint8)),  # 0-d actions
        _batch(0, weights=np.array(1.0, np.float32)),  # 0-d weights
        _batch(0, actions=np.zeros(BATCH - 1, np.uint8)),  # lengths disagree
        _batch(0, n=BATCH + 1),  # not whole batches
        _batch(0, n=0),  # empty
        _batch(0, ids=np.arange(BATCH, dtype=np.float64)),  # float ids
        _batch(0, rewards=np.ones(BATCH, np.float64)),  # float64 rewards
        _batch(0, weights=np.full(BATCH, nan)),  # NaN IS weights
        _batch(0, weights=np.full(BATCH, -1.0, np.float32)),  # negative weights
        _batch(0, rewards=np.r_[np.ones(BATCH - 1, np.float32), inf]),  # an infinite reward
        _batch(0, bootstraps=np.full(BATCH, nan)),  # NaN bootstraps
        _batch(0, bootstraps=np.full(BATCH, 5.0, np.float32)),  # gamma^k > 1
        _batch(0, actions=np.full(BATCH, 200, np.uint8)),  # no such action
        [
            _raw(
                "batch",
                **{
                    **msgpack.unpackb(
                        encode("batch", frames=np.zeros((1, STACK2, SIZE, SIZE), np.uint8), **_fields(1, 0)), raw=False
                    ),
                    "stats": {**as_map(STATS), "size": math.nan},
                },
            )
        ],
        [
            encode(
                "batch_shared",
                frame_numbers=np.zeros((BATCH, STACK2), np.int64),
                ring=12345,  # a ring it
                **_fields(BATCH, 0),
            )
        ],  # never mapped
        [
            encode("batch_shared", frame_numbers=np.zeros((BATCH, STACK2), np.int32), ring=12345, **_fields(BATCH, 0))
        ],  # int32 numbers
        [_raw("frame_ring", pid="me", fd=3, token=1, frames=10, size=SIZE)],
        [_raw("snapshot_done", name="x.replay.npz", ok="yes", stats={})],
        [_raw("snapshot_done", name=7, ok=True, stats={})],
    ]


REATTACH = "then wait for attach_frames"  # ends an answer whose ring the learner does not map


class FakeReplay:
    """A ROUTER standing in for the replay server: answers each sample request with the next scripted
    answer, and records which good batches came back trained (their ids return as priorities). With a
    frame ring it answers "attach_frames" with it, and answers no sample request before that (the
    learner would not map the ring its batches name yet)."""

    def __init__(self, address: str, ring: FrameRing | None = None):
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.MAXMSGSIZE, 64 << 20)
        self.router.bind(address)
        self.ring, self.hold = ring, ring is not None
        self.trained_ids: set[int] = set()
        self.requests: list[dict] = []
        self.pending: list[bytes] = []
        self.attaches = 0

    def serve(self, answers: list[list], until, timeout: float, what: str, on_other=None) -> None:
        """Answer requests with `answers` in order (then hold further ones) until `until()` holds. Each
        answer is a list of messages (each a list of parts, or a function of the request that gives them):
        an unsolicited message comes with a batch."""
        deadline = time.monotonic() + timeout
        answers = list(answers)
        while not until():
            assert time.monotonic() < deadline, (
                f"timed out after {timeout} s waiting for {what}: "
                f"{len(self.requests)} requests, {len(answers)} answers unsent"
            )
            if not self.router.poll(100):
                continue
            identity, *parts = self.router.recv_multipart()
            msg = decode_parts(parts, 64 << 20)
            if "ids" in msg and "priorities" in msg:
                self.trained_ids.update(msg["ids"].tolist())
            if msg["t"] == "sample":
                self.requests.append(msg)
                self.pending.append((identity, msg))
            elif msg["t"] == "attach_frames" and self.ring is not None:
                self.attaches += 1
                self.router.send_multipart([identity, encode("frame_ring", **self.ring.describe())])
                self.hold = False
            elif on_other is not None:
                on_other(identity, msg)
            while self.pending and answers and not self.hold:
                identity, request = self.pending.pop(0)
                for message in answers.pop(0):
                    if message is REATTACH:
                        self.hold = True
                    else:
                        parts = message(request) if callable(message) else message
                        self.router.send_multipart([identity, *parts])

    def close(self) -> None:
        self.router.close(linger=0)
        self.ctx.term()


@contextlib.contextmanager
def remote_learner(launch):
    """The real learner (launch.py --role learner --replay) over loopback TCP, as from another machine
    (local_ipc=false, which needs --insecure), against a FakeReplay on its replay_sample port."""
    base = free_base_port()
    fake = FakeReplay(f"tcp://127.0.0.1:{base + 1}")
    try:
        yield (
            launch(
                *FAST_TEST_ENV,
                "--role",
                "learner",
                "--replay",
                f"127.0.0.1:{base}",
                "--set",
                "local_ipc=false",
                "--insecure",
                base_port=base,
            ),
            fake,
        )
    finally:
        fake.close()


def _script(bad: list[list], unsolicited: list[list], good, first_id: int = 1000) -> tuple[list[list], list[int]]:
    """Answers to sample requests: good batches between the bad replies, and one after the last. An
    unsolicited message (no answer to a request) goes just before a good batch."""
    answers, goods = [], []

    def good_one(before=()):
        goods.append(first_id + 100 * len(goods))
        answers.append([*before, good(goods[-1])])

    good_one()
    for reply in bad:
        answers.append(reply if isinstance(reply, list) and reply[-1] is REATTACH else [reply])
        good_one()
    for message in unsolicited:
        good_one([message])
    return answers, goods


def test_the_learner_drops_and_counts_bad_replies_and_trains_on_the_good_ones(launch):
    """The real learner (launch.py --role learner --replay) against a fake replay server over tcp, as from
    another machine (loopback TCP: local_ipc=false, which needs --insecure): every bad reply is dropped and counted in summary.json, none stops it asking, and it trains on
    each good batch exactly once (their ids come back as priorities)."""
    with remote_learner(launch) as (run, fake):
        ring = FrameRing(10, SIZE)
        bad = _bad_batches(np.random.default_rng(3))
        unsolicited = [[encode("frame_ring", **ring.describe())]]  # a real ring on this machine, never asked for
        late = [encode("snapshot_done", name="checkpoint-1.replay.npz", ok=True, stats=STATS)]  # after a give-up:
        replies, goods = _script(bad, unsolicited + [late], _batch)  # ignored, not bad
        expected = len(bad) + len(unsolicited)
        last = goods[-1]
        fake.serve(
            replies,
            lambda: last in fake.trained_ids or run.proc.poll() is not None,
            300,
            "the learner to train on the last good batch",
        )
        assert run.proc.poll() is None, run.output()
        run.interrupt()
        assert run.wait(60) == 130, run.output()
        summary = run.summary()
        assert summary["learner"]["dropped"] == expected, (summary["learner"], expected, run.output())
        assert summary["updates"] == len(goods), (summary["updates"], len(goods))
        assert set(goods) <= fake.trained_ids, "every good batch was trained on"
        assert all(r.get("shared") is False for r in fake.requests), "a frame ring it never asked for is not used"
        assert "exited unexpectedly" not in run.output() and "Traceback" not in run.output()


def _shared(ring: FrameRing, first_id: int, numbers=None, token=None, **changes) -> list:
    """A "batch_shared" naming frames of `ring` (all written: see ring.announce below)."""
    numbers = np.arange(BATCH * STACK2, dtype=np.int64).reshape(BATCH, STACK2) if numbers is None else numbers
    return [
        encode(
            "batch_shared",
            frame_numbers=numbers,
            ring=ring.token if token is None else token,
            **_fields(BATCH, first_id, **changes),
        )
    ]


def test_the_learner_on_the_replay_machine_drops_bad_shared_batches_and_snapshot_answers(tmp_path):
    """The learner's process entry (as the launcher spawns it) on this machine, over ipc, mapping a real
    frame ring: batch_shared replies from another ring, with wrong frame numbers or values, and bad
    snapshot answers at its final checkpoint are dropped and counted (or, for frames it cannot read
    intact, counted as torn); it trains on the good ones and its final checkpoint names the snapshot."""
    if not stores_in_order():
        pytest.skip(f"a learner on {platform.machine()} takes its frames from the messages")
    ring = FrameRing(BATCH * STACK2, 84)
    if not ring.shared:
        pytest.skip("no memfd here: the frame ring cannot be shared")
    ring.announce(BATCH * STACK2)  # frames 0 .. 255 are written
    config = Config(env=TEST_ENV_ID, base_port=free_base_port(), headless=True, video=False)
    fake = FakeReplay(local_address(config, "replay_sample"), ring)
    reports = fake.ctx.socket(zmq.PULL)
    port = reports.bind_to_random_port("tcp://127.0.0.1")
    stop = multiprocessing.get_context("spawn").Event()
    learner = multiprocessing.get_context("spawn").Process(
        target=role_entry,
        args=("learner", 0, config.to_dict(), str(tmp_path), stop, os.getpid(), "", f"tcp://127.0.0.1:{port}"),
    )
    bad = [
        [_shared(ring, 0, token=ring.token ^ 1), REATTACH],  # another ring
        _shared(ring, 0, numbers=np.zeros((BATCH, STACK2), np.int32)),  # int32 numbers
        _shared(ring, 0, numbers=np.zeros((BATCH, 4), np.int64)),  # obs without next obs
        _shared(ring, 0, numbers=np.array(0, np.int64)),  # 0-d
        _shared(ring, 0, weights=np.full(BATCH, np.nan, np.float32)),
        _shared(ring, 0, actions=np.full(BATCH, ACTIONS, np.uint8)),
    ]
    torn = [
        _shared(ring, 0, numbers=np.full((BATCH, STACK2), -1, np.int64)),  # not in the ring
        _shared(ring, 0, numbers=np.full((BATCH, STACK2), BATCH * STACK2, np.int64)),
    ]  # not written yet
    answers, goods = _script(bad + torn, [], lambda first: _shared(ring, first))
    snapshots, final = [], {}

    def on_other(identity, msg):
        if msg["t"] == "snapshot":
            snapshots.append(msg["name"])
            (tmp_path / msg["name"]).write_bytes(b"a snapshot")
            for answer in (
                _raw("snapshot_done", name=msg["name"], ok="yes", stats={}),  # malformed
                encode("snapshot_done", name="other.replay.npz", ok=True, stats=STATS),  # not ours
                encode("snapshot_done", name=msg["name"], ok=True, stats=STATS),
            ):
                fake.router.send_multipart([identity, answer])

    def learner_reports():
        while reports.poll(0):
            msg = decode(reports.recv(), 64 << 20)
            if msg["kind"] == "progress":
                final.update(msg["values"])
            elif msg["kind"] in ("log", "failed"):
                logs.append(msg.get("text", ""))

    logs: list[str] = []
    learner.start()
    try:
        fake.serve(
            answers,
            lambda: learner_reports() or goods[-1] in fake.trained_ids or not learner.is_alive(),
            300,
            "the learner to train on the last good batch",
            on_other,
        )
        assert learner.is_alive(), logs
        stop.set()
        fake.serve([], lambda: learner_reports() or not learner.is_alive(), 60, "the learner to stop", on_other)
        learner.join(30)
        learner_reports()
        assert learner.exitcode == 0, logs
        expected = len(bad) + 1  # and the malformed snapshot answer
        assert final["dropped"] == expected, (final, expected, logs)
        assert final["torn_batches"] == len(torn), (final, logs)
        assert final["updates"] == len(goods), (final, len(goods))
        assert set(goods) <= fake.trained_ids
        assert any(r.get("shared") for r in fake.requests), "it asked for shared batches"
        assert fake.attaches == 2, "it asked for the ring again after a batch from another"
        assert len(snapshots) == 1 and any("saved checkpoint_final.pth with replay memory" in line for line in logs), (
            logs
        )
    finally:
        if learner.is_alive():
            learner.kill()
            learner.join(10)
        reports.close(linger=0)
        fake.close()
