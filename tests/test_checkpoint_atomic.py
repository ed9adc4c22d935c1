"""Checkpoints and replay snapshots survive a SIGKILL mid-save; forked snapshots are the buffer at the fork;
a learner restored from its checkpoint is identical to the one that saved it.

The kill tests run a writer child (`python -c`) that saves generation after generation to one path and
SIGKILL it at assorted moments: whatever the moment, the path must load and hold one complete generation
(its generation counter agrees with its contents), never a torn or partial one, and never an older
generation than the child had already finished.
"""

import os
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from common.checkpoint import load_checkpoint, save_checkpoint
from common.config import Config
from learner.learning import DQNLearner
from replay_server.buffer import PrioritizedReplay
from replay_server.snapshot import read_snapshot, remove_unused_frame_files, start_snapshot, write_snapshot
from tests.harness import REPO, alive

pytestmark = pytest.mark.slow

# Source shared by this test and the writer children: what generation g of each file holds.
GENERATIONS = '''
import numpy as np

from actor.chunks import ChunkBuilder
from replay_server.buffer import PrioritizedReplay

CKPT_UNIT = 256 * 1024             # float32 elements: generation g's checkpoint holds 1-4 MB


def checkpoint_size(g):
    return CKPT_UNIT * (1 + g % 4)


REPLAY = dict(capacity=1024, frame_size=84, frame_stack=4, alpha=0.6, num_actions=7)


def fill_replay(buffer, rng, chunks):
    """Realistic chunks from ChunkBuilder (3-step returns): random frames, episodes that end, chunks of 64
    or fewer."""
    builder = ChunkBuilder(buffer.frame_stack, n_step=3, gamma=0.99)
    size = buffer.frame_size
    builder.start_episode(rng.integers(0, 256, (size, size), dtype=np.uint8))
    added = 0
    while added < chunks:
        done = bool(rng.random() < 0.01)
        builder.add(rng.integers(0, 256, (size, size), dtype=np.uint8), int(rng.integers(buffer.num_actions)),
                    float(rng.normal()), done, False)
        if len(builder) == 64 or done:
            c = builder.take()
            buffer.add_chunk(c["frames"], c["stack"], c["actions"], c["rewards"], c["bootstraps"])
            added += 1
            if done:
                builder.start_episode(rng.integers(0, 256, (size, size), dtype=np.uint8))
    batch = buffer.sample(64, 0.4, rng)
    buffer.update_priorities(batch.ids, rng.random(64) * 5 + 1e-3)


def replay_generation(g):
    """Generation g of the snapshot: 4-21 chunks (the larger ones wrap the 1024-slot ring and evict)."""
    buffer = PrioritizedReplay(**REPLAY)
    fill_replay(buffer, np.random.default_rng(g), 4 + g % 18)
    return buffer
'''
_shared: dict = {}
exec(compile(GENERATIONS, "<GENERATIONS>", "exec"), _shared)  # noqa: S102 - the children run this same text
checkpoint_size, REPLAY = _shared["checkpoint_size"], _shared["REPLAY"]
fill_replay, replay_generation = _shared["fill_replay"], _shared["replay_generation"]

CHECKPOINT_WRITER = (
    GENERATIONS
    + """
import sys
import torch
from common.checkpoint import save_checkpoint

path, g = sys.argv[1], int(sys.argv[2])
def state(g):
    return {"generation": g, "data": torch.full((checkpoint_size(g),), float(g)),
            "meta": {"generation": g, "size": checkpoint_size(g)}}
save_checkpoint(state(g), path)
print("first done", flush=True)
while True:
    g += 1
    save_checkpoint(state(g), path)
"""
)

SNAPSHOT_WRITER = (
    GENERATIONS
    + """
import sys
import os
from replay_server.snapshot import remove_unused_frame_files, write_snapshot

path, g = sys.argv[1], int(sys.argv[2])
# Two contents built once, written alternately: the loop's time goes to writing, so kills land mid-write.
# Before each write the frame files no snapshot names go, as the replay server does before each snapshot.
contents = [replay_generation(g), replay_generation(g + 1)]
first = g
remove_unused_frame_files(os.path.dirname(path))
write_snapshot(contents[0], {"generation": g}, path)
print("first done", flush=True)
while True:
    g += 1
    remove_unused_frame_files(os.path.dirname(path))
    write_snapshot(contents[(g - first) % 2], {"generation": g}, path)
"""
)

# Delays (s) after the child's first complete save; then a few more kills while none has hit a write.
KILL_DELAYS = [0.0, 0.004, 0.012, 0.03, 0.07, 0.15]
EXTRA_DELAYS = [0.02, 0.05, 0.09, 0.13, 0.2, 0.25]


def run_and_kill(code: str, path: str, first_generation: int, delay: float) -> bool:
    """Start a writer at `first_generation`, wait for its first complete save, SIGKILL it `delay` s later.
    Returns whether it left a .tmp file (the kill landed while a save was in progress: a checkpoint's, a
    snapshot's or its frame file's)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, path, str(first_generation)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        if line.strip() != "first done":
            proc.kill()
            pytest.fail(f"writer did not finish its first save: {line!r} {proc.communicate()[1][-2000:]}")
        started = time.time()
        time.sleep(delay)
        assert proc.poll() is None, "the writer exited on its own"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    folder = os.path.dirname(path)
    partial = [os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".tmp")]
    return any(os.path.getmtime(name) >= started for name in partial)  # not one a previous writer left


def kill_repeatedly(code: str, path: str, check) -> list[bool]:
    """Kills at every KILL_DELAYS moment, then more until at least one kill has landed mid-write."""
    mid_write = []
    delays = iter(KILL_DELAYS + EXTRA_DELAYS)
    for kill, delay in enumerate(delays):
        if kill >= len(KILL_DELAYS) and any(mid_write):
            break
        first = (kill + 1) * 100_000  # each child starts at its own generation, above the last one's
        mid_write.append(run_and_kill(code, path, first, delay))
        check(path, first)
    return mid_write


# --- SIGKILL during a save -----------------------------------------------------------------------------


def check_checkpoint(path: str, first: int) -> None:
    state = load_checkpoint(path)
    g = state["generation"]
    assert isinstance(g, int) and g >= first, f"generation {g}: older than the child's finished first save {first}"
    assert state["meta"] == {"generation": g, "size": checkpoint_size(g)}
    assert torch.equal(state["data"], torch.full((checkpoint_size(g),), float(g))), f"generation {g} is torn"


def test_sigkill_during_checkpoint_save_keeps_a_complete_checkpoint(tmp_path):
    path = str(tmp_path / "checkpoint.pth")
    mid_write = kill_repeatedly(CHECKPOINT_WRITER, path, check_checkpoint)
    assert len(mid_write) >= 5
    assert any(mid_write), "no kill landed during a save: the test did not exercise a torn write"
    # A leftover .tmp from the last kill is only a leftover: saving again over it works and loads.
    save_checkpoint(
        {
            "generation": 7,
            "data": torch.full((checkpoint_size(7),), 7.0),
            "meta": {"generation": 7, "size": checkpoint_size(7)},
        },
        path,
    )
    check_checkpoint(path, 7)
    assert not os.path.exists(path + ".tmp")


def check_snapshot(path: str, first: int) -> None:
    buffer = PrioritizedReplay(**REPLAY)
    counters = read_snapshot(path, buffer)
    g = counters["generation"]
    assert isinstance(g, int) and g >= first, f"generation {g}: older than the child's finished first save {first}"
    expected = replay_generation(first + (g - first) % 2)  # the writer alternates two contents
    assert buffer.content_hash() == expected.content_hash(), f"snapshot generation {g} is torn"


def test_sigkill_during_replay_snapshot_keeps_a_complete_snapshot(tmp_path):
    path = str(tmp_path / "snapshot.replay.npz")  # a snapshot's name, as the unused frame files' removal knows it
    mid_write = kill_repeatedly(SNAPSHOT_WRITER, path, check_snapshot)
    assert len(mid_write) >= 5
    assert any(mid_write), "no kill landed during a write: the test did not exercise a torn write"
    remove_unused_frame_files(str(tmp_path))
    write_snapshot(replay_generation(3), {"generation": 3}, path)
    check_snapshot(path, 3)
    assert not os.path.exists(path + ".tmp")


# --- the forked snapshot writer ------------------------------------------------------------------------


def test_forked_snapshot_is_the_buffer_at_the_fork(tmp_path):
    path = str(tmp_path / "replay.npz")
    rng = np.random.default_rng(1)
    buffer = PrioritizedReplay(**REPLAY)
    fill_replay(buffer, rng, 20)  # past capacity: the rings have wrapped
    counters = {"episodes": 12, "env_steps": buffer.inserted}
    before = buffer.content_hash()

    pid = start_snapshot(buffer, counters, path)
    assert pid is not None and pid > 0
    fill_replay(buffer, rng, 12)  # the parent goes straight on: overwrites frames, evicts
    after = buffer.content_hash()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"snapshot child status {status}"

    assert after != before  # the parent really changed the buffer meanwhile
    restored = PrioritizedReplay(**REPLAY)
    assert read_snapshot(path, restored) == counters
    assert restored.content_hash() == before
    assert not os.path.exists(path + ".tmp")


# A server that forks a snapshot writer (made slow: it would write for a minute) and is then SIGKILLed.
ORPHAN_SERVER = (
    GENERATIONS
    + """
import os, sys, time
from replay_server import snapshot

def slow_write(buffer, counters, path):
    time.sleep(60)

snapshot.write_snapshot = slow_write
buffer = replay_generation(1)
print(snapshot.start_snapshot(buffer, {"generation": 1}, sys.argv[1]), flush=True)
time.sleep(60)
"""
)


def test_the_forked_writer_dies_with_a_killed_server(tmp_path):
    """The launcher stops the processes it started; a snapshot writer must not outlive its server."""
    server = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SERVER, str(tmp_path / "replay.npz")], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        writer = int(server.stdout.readline())
        time.sleep(0.5)  # the writer is running (it sleeps in its slow write)
        os.kill(writer, 0)
        server.kill()
        server.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and writer in alive([writer]):
            time.sleep(0.05)
        assert writer not in alive([writer]), "the snapshot writer outlived its killed server"
    finally:
        server.kill()
        if server.stdout:
            server.stdout.close()


# --- learner save/restore ------------------------------------------------------------------------------


def random_batch(rng, config: Config) -> dict:
    b, s, size = config.batch_size, config.frame_stack, config.frame_size
    return dict(
        frames=rng.integers(0, 256, (b, 2 * s, size, size), dtype=np.uint8),
        actions=rng.integers(0, config.num_actions, b).astype(np.uint8),
        rewards=rng.normal(0, 2, b).astype(np.float32),
        bootstraps=np.where(rng.random(b) < 0.25, 0.0, config.gamma**config.n_step).astype(np.float32),
        weights=rng.uniform(0.2, 1.0, b).astype(np.float32),
    )


def assert_identical(a, b, where: str = "state") -> None:
    """Recursive equality of state dicts: tensors equal in dtype, shape and every value."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_learner_save_restore_is_identical(tmp_path, one_torch_thread):
    config = Config(
        batch_size=4,
        replay_capacity=64,
        learning_starts=0,
        target_update_every=2,
        lr=1e-3,
        lr_decay_updates=100,
        device="cpu",
    )
    cpu = torch.device("cpu")
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    learner = DQNLearner(config, cpu)
    for _ in range(3):  # target synced at update 2, online moved on since
        learner.step(**random_batch(rng, config))
    assert learner.optimizer.state_dict()["state"], "Adam has no state yet"
    path = str(tmp_path / "learner.pth")
    learner.save(path, {"episodes": 5, "env_steps": 1234})

    torch.manual_seed(99)  # a differently initialised learner
    restored = DQNLearner(config, cpu)
    with pytest.raises(AssertionError):
        assert_identical(learner.online.state_dict(), restored.online.state_dict())
    counters = restored.restore(path)
    assert counters == {"updates": 3, "episodes": 5, "env_steps": 1234}
    assert restored.updates == learner.updates == 3
    assert_identical(learner.online.state_dict(), restored.online.state_dict(), "online")
    assert_identical(learner.target.state_dict(), restored.target.state_dict(), "target")
    assert_identical(learner.optimizer.state_dict(), restored.optimizer.state_dict(), "optimizer")
    assert restored.optimizer.lr == learner.optimizer.lr < config.lr, "the learning rate schedule goes on"
    with pytest.raises(AssertionError):  # the target is not simply a copy of online
        assert_identical(learner.online.state_dict(), learner.target.state_dict())

    # And they go on identically: the same batch gives the same metrics, priorities and weights.
    batch = random_batch(rng, config)
    metrics_a, prio_a = learner.step(**batch)
    metrics_b, prio_b = restored.step(**batch)
    assert metrics_a == metrics_b
    np.testing.assert_array_equal(prio_a, prio_b)
    assert_identical(learner.online.state_dict(), restored.online.state_dict(), "online after a step")
    assert_identical(learner.optimizer.state_dict(), restored.optimizer.state_dict(), "optimizer after a step")
