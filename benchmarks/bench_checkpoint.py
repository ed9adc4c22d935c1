"""Checkpoints: replay snapshot write/read seconds and bytes per stored transition (84x84, stack 4); the
next, incremental snapshot after a tenth of the buffer is new (forked, as in a run): the time its fork blocks
the server, its seconds and bytes, and how far apart checkpoint_time_share then spaces periodic checkpoints;
the learner checkpoint's size and save/load seconds. --live MINUTES also runs the launcher at the defaults
(periodic checkpoints every 50 episodes) on the test environment (episodes of a few steps) or, with
--live-env mario, on Super Mario Bros 1-1, and reports its checkpoints: how many, the learner's share of
time spent on them, and the replay files they wrote. Checks the requirement that a
replay snapshot takes at most 8192 bytes per stored transition. --capacity 1000000 needs about 9 GB of
memory and disk (the buffer is freed before it is read back)."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import subprocess
import sys
import tempfile
import time
from functools import partial

import numpy as np
import torch

from actor.chunks import ChunkBuilder
from benchmarks.common import free_base_port, machine, parser
from common.config import TEST_ENV_ID, Config
from learner.learning import DQNLearner
from replay_server.buffer import PrioritizedReplay
from replay_server.snapshot import FRAME_FILE, read_snapshot, start_snapshot, write_snapshot

MAX_SNAPSHOT_BYTES_PER_TRANSITION = 8192
LIVE_ENVS = {"test": TEST_ENV_ID, "mario": Config().env}
FRAME_SIZE, FRAME_STACK, NUM_ACTIONS, CHUNK = 84, 4, 7, 64


def fill(buffer: PrioritizedReplay, rng: np.random.Generator, until: int) -> None:
    """Actor-like chunks (ChunkBuilder, random frames) until `until` transitions were ever inserted: 64
    transitions, shorter at an episode's end."""
    builder = ChunkBuilder(FRAME_STACK)
    builder.start_episode(rng.integers(0, 256, (FRAME_SIZE, FRAME_SIZE), dtype=np.uint8))
    episode_left = int(rng.integers(200, 2000))
    while buffer.inserted < until:
        frames = rng.integers(0, 256, (CHUNK, FRAME_SIZE, FRAME_SIZE), dtype=np.uint8)
        for frame in frames:
            episode_left -= 1
            builder.add(frame, int(rng.integers(NUM_ACTIONS)), float(rng.normal()), episode_left == 0, False)
            if len(builder) == CHUNK or episode_left == 0:
                c = builder.take()
                buffer.add_chunk(c["frames"], c["stack"], c["actions"], c["rewards"], c["bootstraps"])
            if episode_left == 0:
                builder.start_episode(rng.integers(0, 256, (FRAME_SIZE, FRAME_SIZE), dtype=np.uint8))
                episode_left = int(rng.integers(200, 2000))
    batch = buffer.sample(1024, 0.4, rng)  # priorities that are not all equal
    buffer.update_priorities(batch.ids, rng.random(1024) + 1e-3)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def written(folder: str, before: set[str]) -> int:
    """Bytes of the files in `folder` that are not in `before` (what a snapshot wrote)."""
    return sum(os.path.getsize(os.path.join(folder, name)) for name in set(os.listdir(folder)) - before)


def bench_replay(capacity: int, folder: str) -> bool:
    rng = np.random.default_rng(0)
    new_buffer = partial(PrioritizedReplay, capacity, FRAME_SIZE, FRAME_STACK, alpha=0.6, num_actions=NUM_ACTIONS)
    buffer = new_buffer()
    fill(buffer, rng, capacity)
    counters = {"episodes": 100, "env_steps": buffer.inserted}

    write_s, saved = timed(partial(write_snapshot, buffer, counters, os.path.join(folder, "full.replay.npz")))
    size = written(folder, set())
    per_transition = size / len(buffer)
    print(
        f"replay snapshot: {per_transition:.0f} bytes per stored transition "
        f"(in memory {buffer.nbytes() / capacity:.0f} bytes/transition)"
    )

    # The next checkpoint, after the actors added a tenth of the buffer: it writes only what is new.
    added = capacity // 10
    fill(buffer, rng, buffer.inserted + added)
    path = os.path.join(folder, "incremental.replay.npz")
    before = set(os.listdir(folder))
    fork_s, pid = timed(partial(start_snapshot, buffer, counters, path, saved))
    child_start = time.perf_counter()
    if pid is not None:
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"snapshot child failed ({status})"
    # Without a fork the server itself wrote the snapshot, in fork_s: that is what the learner waits for.
    snapshot_s = time.perf_counter() - child_start if pid is not None else fork_s
    increment = written(folder, before)
    print(
        f"start_snapshot: parent blocked {fork_s * 1e3:.1f} ms by the fork; "
        f"child wrote the file in {snapshot_s:.2f} s more"
        if pid is not None
        else f"start_snapshot: no fork here, written synchronously in {fork_s:.2f} s"
    )
    print(
        f"incremental snapshot after {added:,} new transitions: {increment / 1e6:.1f} MB written in "
        f"{snapshot_s:.2f} s ({increment / size:.0%} of the full snapshot's {size / 1e6:.1f} MB, "
        f"{write_s:.2f} s)"
    )
    share = Config().checkpoint_time_share
    print(
        f"checkpoint_time_share {share:.0%}: the learner waits for the snapshot ({snapshot_s:.1f} s), so "
        f"periodic checkpoints come no more often than every {snapshot_s / share / 60:.1f} min at this size"
    )

    expected, length = buffer.content_hash(), len(buffer)
    buffer.close()  # its frame ring (shared memory) goes now, whatever still refers to the buffer
    del buffer  # read back into a fresh buffer, not beside this one
    restored = new_buffer()
    read_s, _ = timed(partial(read_snapshot, path, restored))
    assert restored.content_hash() == expected, "the snapshot did not read back identical"
    restored.close()
    del restored
    print(
        f"replay snapshot: {length:,} transitions, {size / 1e6:.1f} MB, write {write_s:.2f} s, "
        f"read {read_s:.2f} s ({size / 1e6 / write_s:.0f} / {size / 1e6 / read_s:.0f} MB/s)"
    )

    ok = per_transition <= MAX_SNAPSHOT_BYTES_PER_TRANSITION
    print(
        f"{'PASS' if ok else 'FAIL'}: replay snapshot {per_transition:.0f} bytes per stored transition "
        f"{'<=' if ok else '>'} {MAX_SNAPSHOT_BYTES_PER_TRANSITION} at {FRAME_SIZE}x{FRAME_SIZE}"
    )
    return ok


def bench_learner(folder: str, repeats: int) -> None:
    config = Config(device="cpu")
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    learner = DQNLearner(config, cpu)
    rng = np.random.default_rng(0)
    b, s = 4, config.frame_stack
    learner.step(
        rng.integers(0, 256, (b, 2 * s, config.frame_size, config.frame_size), dtype=np.uint8),
        rng.integers(0, config.num_actions, b).astype(np.uint8),
        np.zeros(b, np.float32),
        np.full(b, config.gamma**config.n_step, np.float32),
        np.ones(b, np.float32),
    )  # Adam's moments exist
    path = os.path.join(folder, "checkpoint.pth")
    fresh = DQNLearner(config, cpu)
    save_s = min(timed(lambda: learner.save(path, {"episodes": 1}))[0] for _ in range(repeats))
    load_s = min(timed(lambda: fresh.restore(path))[0] for _ in range(repeats))
    params = sum(p.numel() for p in learner.online.parameters())
    print(
        f"learner checkpoint: {os.path.getsize(path) / 1e6:.1f} MB ({params:,} parameters x online, target, "
        f"2 Adam moments), save {save_s:.3f} s, load {load_s:.3f} s (best of {repeats})"
    )


def bench_live(minutes: float, env: str) -> None:
    """A real run at the defaults: on the test env (episodes of a few steps, so checkpoints come as often as
    the spacing allows) or on Mario 1-1 (checkpoints every 50 episodes, as a user's run)."""
    with tempfile.TemporaryDirectory(prefix="bench_checkpoint_live_", dir="/tmp") as runs:
        command = [sys.executable, "launch.py", "--env", LIVE_ENVS[env], "--headless", "--no-video", "--runs-dir", runs]
        command += ["--max-minutes", f"{minutes:g}", "--set", f"base_port={free_base_port()}"]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sizes: dict[str, int] = {}  # each replay file the run wrote (a snapshot or a frame file), at its largest
        while proc.poll() is None:
            for folder in glob.glob(os.path.join(runs, "*_run")):
                for name in os.listdir(folder):
                    if name.endswith(".replay.npz") or FRAME_FILE.fullmatch(name) and not name.endswith(".tmp"):
                        with contextlib.suppress(OSError):
                            sizes[name] = max(sizes.get(name, 0), os.path.getsize(os.path.join(folder, name)))
            time.sleep(0.2)
        output = proc.stdout.read()
    saved = re.findall(r"saved (checkpoint\S*)\.pth with replay memory .* in (\d+\.\d+) s", output)
    periodic = [float(s) for name, s in saved if name == "checkpoint"]
    final = sum(float(s) for name, s in saved if name != "checkpoint")
    summary = re.search(r"stopped: (.*?);", output)
    if proc.returncode != 0 or not saved:
        sys.exit(f"the live run failed (exit {proc.returncode}):\n{output[-3000:]}")
    print(
        f"live run, {'test env' if env == 'test' else LIVE_ENVS[env]}, {minutes:g} min ({summary[1] if summary else 'stopped'}): "
        f"{len(periodic)} periodic checkpoints with replay memory, {sum(periodic):.1f} s of them "
        f"({sum(periodic) / (minutes * 60):.1%} of the run), then the final one on stopping in {final:.1f} s; "
        f"{sum(sizes.values()) / 1e6:.0f} MB of replay files written"
    )


def main() -> None:
    p = parser(__doc__)
    p.add_argument(
        "--capacity", type=int, help="replay transitions (default 100000; --smoke uses 5000 and takes no --capacity)"
    )
    p.add_argument("--live", type=float, metavar="MINUTES", help="also a real run of this many minutes")
    p.add_argument("--live-env", choices=sorted(LIVE_ENVS), default="test", help="the live run's env (default test)")
    args = p.parse_args()
    if args.capacity is None:
        args.capacity = 5_000 if args.smoke else 100_000
    elif args.smoke:
        p.error("--smoke runs at capacity 5000: leave out --capacity or --smoke")
    if args.capacity < 1_000:
        p.error("--capacity must be at least 1000")
    print(f"machine: {machine()}; capacity {args.capacity:,}, {FRAME_SIZE}x{FRAME_SIZE} frames, stack {FRAME_STACK}")
    with tempfile.TemporaryDirectory(prefix="bench_checkpoint_", dir="/tmp") as folder:
        ok = bench_replay(args.capacity, folder)
        bench_learner(folder, 1 if args.smoke else 3)
    if args.live:
        bench_live(args.live, args.live_env)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
