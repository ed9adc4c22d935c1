"""`launch.py --serial` (launcher/serial.py): one process, no ZeroMQ. It learns the test env and writes the
usual run folder without a child process or a socket, its update is the distributed learner's to the bit,
and Ctrl+C stops it cleanly."""

import json
import os
import subprocess
import sys
import time
from collections import deque
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from actor.chunks import ChunkBuilder
from actor.evaluate import load_policy, play
from common.checkpoint import load_checkpoint
from common.config import TEST_ENV_ID, Config
from actor.envs import make_env
from common.protocol import decode, decode_parts
from common.records import ReplayStats
from launcher.plot import read_log
from launcher.resume import load_resume_state, plan_resume
from launcher.serial import learn
from learner.replay_batches import ReplayBatches
from learner.service import LearnerService, _check_values
from replay_server.buffer import PrioritizedReplay
from replay_server.rate_limit import RateLimiter
from replay_server.server import ReplayServer
from replay_server.snapshot import read_snapshot
from tests.conftest import FAST_TEST_ENV
from tests.harness import REPO

SERIAL = ("--serial", *FAST_TEST_ENV, "--set", "samples_per_insert=1")


def fd_targets(pid: int) -> list[str]:
    """What the process's open file descriptors point at ([] once it is gone)."""
    targets = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass
    except OSError:
        pass
    return targets


def watch_alone(run, timeout: float) -> int:
    """Poll the serial launcher until it exits (at most `timeout` s): it never has a child process or an open
    socket (ZeroMQ's are Unix or TCP sockets). Returns how many times it was seen running."""
    seen, deadline = 0, time.monotonic() + timeout
    while run.proc.poll() is None and time.monotonic() < deadline:
        children = run.descendants()
        sockets = [t for t in fd_targets(run.proc.pid) if t.startswith("socket:")]
        if run.proc.poll() is None:  # still running when looked at: what was seen is its own
            assert not children, f"--serial started child processes {children}:\n{run.output()}"
            assert not sockets, f"--serial opened sockets {sockets}"
            seen += 1
        time.sleep(0.2)
    return seen


@pytest.mark.slow
def test_serial_learns_the_test_env_and_writes_the_usual_run_folder(launch):
    """Greedy play of checkpoint_final.pth reaches the flag every time (a random policy rarely does); the run
    folder has config.json, log.txt with Episode and Eval lines, summary.json and a final checkpoint whose
    replay snapshot the distributed trainer can resume from; no child process or socket at any time."""
    run = launch(*SERIAL, "--max-steps", "3000", "--set", "eval_every_episodes=50")
    assert watch_alone(run, 240) >= 5, run.output()
    assert run.wait(10) == 0, run.output()
    assert "mario-apex: stops after 3,000 env steps\n" in run.output(), "the limit is said at the start"
    assert "mario-apex: stopped: reached --max-steps" in run.output()

    summary = run.summary()
    assert summary["mode"] == "serial" and summary["env_steps"] == 3000 and summary["updates"] > 0
    assert summary["replay"]["inserted"] == 3000, "every transition reached the replay"
    # The exact ratio: one sampled transition per inserted one from the chunk that filled learning_starts (500) on,
    # less than a batch short, the last chunk (at most 63 transitions and n - 1 pending ones) untrained.
    assert 3000 - 500 - 64 - 66 - 32 < summary["replay"]["sampled"] <= 3000 - 500, summary
    assert summary["updates"] == summary["replay"]["sampled"] // 32
    assert Config.from_dict(json.loads((run.run_dir / "config.json").read_text())).env == TEST_ENV_ID

    train, evaluation = read_log(str(run.run_dir / "log.txt"))
    assert len(train.steps) == summary["episodes"] and max(train.steps) <= 3000
    assert len(evaluation.steps) == summary["evaluations"] >= 2
    kept = load_checkpoint(str(run.run_dir / "best_eval.pth"))["eval"]
    assert kept["actor_steps"] in evaluation.steps, "the env steps it was played at, not its length"

    final = str(run.run_dir / "checkpoint_final.pth")
    assert load_checkpoint(final)["counters"]["updates"] == summary["updates"]
    net, config = load_policy(final)
    greedy = play(net, config, episodes=3)
    random_policy = play(net, config, episodes=200, epsilon=1.0, seed=1)
    assert np.mean([e.flag for e in random_policy]) < 0.2
    assert all(e.flag for e in greedy), greedy
    obs, _ = make_env(config).reset()
    with torch.no_grad():
        q = net(torch.from_numpy(obs).unsqueeze(0))[0]
    assert q.max() > 0.3, f"values were learned (an untrained network's are about 0): {q}"

    checkpoint, state = load_resume_state(str(run.run_dir))  # as `--resume RUN` finds it
    assert checkpoint == final
    plan = plan_resume(checkpoint, state, config, None)
    replay = PrioritizedReplay(
        config.replay_capacity, config.frame_size, config.frame_stack, config.per_alpha, config.num_actions
    )
    assert read_snapshot(plan.replay_snapshot, replay)["env_steps"] == 3000 and len(replay) == 3000


@pytest.mark.slow
def test_ctrl_c_stops_serial_cleanly_with_a_final_checkpoint(launch):
    """SIGINT to the process group (Ctrl+C in a terminal): exit status 130 within the 10 s the launcher
    promises, a loadable checkpoint_final.pth with the updates made, the summary line and summary.json."""
    run = launch(*SERIAL)
    run.wait_for_updates(1, timeout=120)
    run.interrupt()
    assert run.wait(10) == 130, run.output()
    output = run.output()
    assert "mario-apex: stopped: interrupted (Ctrl+C); results in" in output
    assert "saved checkpoint_final.pth with replay memory" in output and "Traceback" not in output
    summary = run.summary()
    assert summary["stop_reason"] == "interrupted (Ctrl+C)" and summary["exit_code"] == 130
    state = load_checkpoint(str(run.run_dir / "checkpoint_final.pth"))
    assert state["counters"]["updates"] == summary["updates"] >= 1
    assert state["counters"]["env_steps"] == summary["env_steps"] > 0
    assert (run.run_dir / state["counters"]["replay_file"]).exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (("--role", "learner"), "--serial runs one actor, the replay and the learner in this process"),
        (("--actors", "2"), "it takes no --role, --resume or more than one actor"),
        (("--set", "actors=3"), "it takes no --role, --resume or more than one actor"),
        (("--resume", "runs"), "it takes no --role, --resume or more than one actor"),
        (("--env", "Tetris-v0"), "unknown env id 'Tetris-v0'"),
        (
            ("--env", TEST_ENV_ID, "--set", "action_set=right_only"),
            "MarioApexTest-v0 has the simple action set only, got action_set=right_only",
        ),
    ],
)
def test_serial_refuses_what_it_cannot_do_in_one_line(tmp_path, args, message):
    """One line on stderr, exit status 2, no run folder."""
    result = subprocess.run(
        [sys.executable, "launch.py", "--serial", "--runs-dir", str(tmp_path / "runs"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert lines[0].startswith("launch.py: error: ")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# --- the same update as the distributed path -----------------------------------------------------------------


def filled_replay(config: Config, steps: int = 300) -> PrioritizedReplay:
    """A replay holding `steps` test-env transitions played with seeded random actions, chunked as actors do."""
    env, rng = make_env(config), np.random.default_rng(3)
    replay = PrioritizedReplay(
        config.replay_capacity, config.frame_size, config.frame_stack, config.per_alpha, config.num_actions
    )
    chunks = ChunkBuilder(config.frame_stack, config.n_step, config.gamma)
    obs, _ = env.reset()
    chunks.start_episode(obs[-1])
    for _ in range(steps):
        action = int(rng.integers(config.num_actions))
        obs, reward, terminated, truncated, _ = env.step(action)
        chunks.add(obs[-1], action, reward, terminated, truncated)
        if terminated or truncated or len(chunks) >= config.chunk_size:
            replay.add_chunk(**chunks.take())
        if terminated or truncated:
            obs, _ = env.reset()
            chunks.start_episode(obs[-1])
    return replay


def learner_pair(config: Config):
    from learner.learning import DQNLearner

    torch.manual_seed(7)
    serial = DQNLearner(config, torch.device("cpu"))
    torch.manual_seed(7)
    distributed = DQNLearner(config, torch.device("cpu"))
    return serial, distributed


@pytest.mark.parametrize("shared", [True, False], ids=["frames-from-shared-memory", "frames-in-the-messages"])
def test_serial_update_is_the_distributed_learners_update_on_the_same_batch(shared, one_torch_thread):
    """From identical weights and identical replay memory, rounds of serial `learn` and of the distributed
    path (the replay server's request handling and batch serving, the msgpack messages, the learner's batch
    decoding and LearnerService._train, its priorities riding on the next sample request back to the server)
    give bit-identical losses, priorities, weights, optimizer state and replay memory. The distributed learner
    asks for transitions_per_request (256) transitions and splits them into batches; here one batch per request,
    so both take the very same batch."""
    config = Config(
        env=TEST_ENV_ID,
        device="cpu",
        learning_starts=0,
        replay_capacity=2000,
        batch_size=16,
        transitions_per_request=16,
        target_update_every=2,
        per_eps=1e-3,
        seed=0,
    )
    replay_a, replay_b = filled_replay(config), filled_replay(config)
    assert replay_a.content_hash() == replay_b.content_hash()
    serial, distributed = learner_pair(config)
    rng_a, rng_b = np.random.default_rng(10), np.random.default_rng(10)

    # The replay server and learner service, their sockets replaced by lists of what they sent.
    sent_to_learner, sent_to_server = [], []
    limiter = RateLimiter(1, 0.0, 0.0, False)
    limiter.observe(len(replay_b), replay_b.inserted)
    server = SimpleNamespace(
        config=config,
        buffer=replay_b,
        rng=rng_b,
        limiter=limiter,
        pending=deque(),
        _paused_since=None,
        counters={"sampled": 0, "batches": 0},
        stats=lambda: ReplayStats(size=len(replay_b), inserted=replay_b.inserted),
        _send=lambda identity, parts: sent_to_learner.append(parts),
    )
    server._drop = lambda reason: pytest.fail(f"the server dropped a message: {reason}")
    batches = ReplayBatches(
        config.batch_size,
        config.transitions_per_request,
        config.frame_stack,
        config.frame_size,
        shared,
        log=lambda text: None,
    )
    if shared:
        batches.on_frame_ring(replay_b.ring.describe())  # the server's ring, mapped as a learner maps it
        assert batches.ring is not None
    service = SimpleNamespace(
        config=config,
        learner=distributed,
        replay_stats=ReplayStats(),
        batches=batches,
        in_flight=0,
        dropped_priorities=0,
        _window={"loss": 0.0, "q_mean": 0.0, "n": 0},
        rt=SimpleNamespace(log=lambda text: None),
        publish=lambda: None,
        _maybe_checkpoint=lambda: None,
        dealer=SimpleNamespace(send=lambda payload, flags=0: sent_to_server.append(payload)),
    )
    sent_to_server.append(batches.sample_request(distributed.beta()))

    for round_ in range(4):
        metrics = learn(serial, replay_a, rng_a)

        ReplayServer._on_learner_message(server, [b"learner", sent_to_server.pop()])  # + last round's priorities
        ReplayServer._serve_pending(server)
        msg = decode_parts(
            [bytes(p) for p in sent_to_learner.pop()], config.max_message_bytes, expect=("batch", "batch_shared")
        )
        assert msg["t"] == ("batch_shared" if shared else "batch")
        _check_values(msg, config.num_actions)
        msg["batches"] = batches.batches(msg)
        service.in_flight, service._window = 0, {"loss": 0.0, "q_mean": 0.0, "n": 0}
        LearnerService._train(service, msg)

        assert serial.updates == distributed.updates == round_ + 1
        assert service._window == {"loss": metrics["loss"], "q_mean": metrics["q_mean"], "n": 1}
        request = decode(sent_to_server[-1], config.max_message_bytes, expect=("sample",))
        assert len(request["ids"]) == config.batch_size
    ReplayServer._on_learner_message(server, [b"learner", sent_to_server.pop()])  # the last priorities

    for a, b in ((serial.online, distributed.online), (serial.target, distributed.target)):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), name
    moments_a, moments_b = serial.optimizer.state_dict()["state"], distributed.optimizer.state_dict()["state"]
    assert all(torch.equal(moments_a[k][m], moments_b[k][m]) for k in moments_a for m in moments_a[k])
    assert replay_a.content_hash() == replay_b.content_hash(), "the same new priorities reached both replays"
    assert rng_a.bit_generator.state == rng_b.bit_generator.state
    # Not vacuous: training moved the weights and the priorities away from where they started.
    fresh, _ = learner_pair(config)
    assert not torch.equal(fresh.online.head[2].weight, serial.online.head[2].weight)
    assert replay_a.content_hash() != filled_replay(config).content_hash()
    batches.close()
