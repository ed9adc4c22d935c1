"""Failures that used to pass unseen (issue 16, items 13 and 15): replies and priorities that could not go are
counted, failed log.txt writes keep being reported, a dead authenticator thread stops its role, refusals name
the causes they may have, and a restarted actor reports its own rate and plays with a new seed."""

import multiprocessing as mp
import os
import threading
import time

import numpy as np
import pytest
import zmq

import common.log_limit as log_limit
import launcher.episode_log as episode_log
from benchmarks.bench_actor import StopAtCap
from common.addresses import connect_address
from common.config import TEST_ENV_ID, Config
from common.keys import create_keys, load_keys
from common.protocol import decode
from common.runtime import RoleRuntime, run_role
from common.transport import Transport, TransportError
from common.records import ActorStart, EpisodeReport, ReplayStats
from tests.harness import free_base_port

pytestmark = pytest.mark.usefixtures("keep_process_hooks")  # RoleRuntimes are built in this process


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


# --- 13a: the replay server's replies ----------------------------------------------------------------
def replay_server(logs: list):
    from replay_server.server import ReplayServer

    config = Config(env=TEST_ENV_ID, base_port=free_base_port(), replay_capacity=256, learning_starts=256)
    runtime = RoleRuntime("replay", 0, config, StopAtCap(), os.getppid())
    runtime.log = logs.append
    return ReplayServer(runtime, "."), runtime


def test_a_reply_to_a_gone_or_full_peer_is_counted_in_the_stats():
    server, runtime = replay_server([])
    try:
        dealer = runtime.transport.socket(zmq.DEALER, connect=connect_address(server.config, "replay_sample"))
        dealer.send(b"hello")
        assert server.router.poll(5000)
        identity, _ = server.router.recv_multipart()
        server._send(identity, [b"reply"])  # a peer that is there gets it
        assert dealer.poll(5000) and dealer.recv() == b"reply"
        server._send(b"\0gone", [b"reply"])  # one that is not: raised (ROUTER_MANDATORY), counted
        assert server.stats().undeliverable == 1

        class Full:
            def send_multipart(self, *args, **kwargs):
                raise zmq.Again()

        server.router = Full()
        server._send(identity, [b"reply"])  # its queue full: counted too
        assert server.stats().undeliverable == 2
    finally:
        runtime.close()


def test_replies_a_peer_does_not_read_are_bounded_and_counted():
    """A client that asks and never reads held up to 100 replies of up to max_message_bytes each (issue 16,
    item 5: 23 GB). Now its queue is a few replies deep; the rest are undeliverable, counted."""
    server, runtime = replay_server([])
    try:
        queue = server.config.prefetch_batches + 8  # common/topology.py: the learner's few, and a margin
        # A client that never reads takes nothing off the socket: here its own queue holds one message.
        address = connect_address(server.config, "replay_sample")
        dealer = runtime.transport.socket(zmq.DEALER, connect=address, hwm=1)
        dealer.send(b"hello")
        assert server.router.poll(5000)
        identity, _ = server.router.recv_multipart()
        for _ in range(60):
            server._send(identity, [b"x" * (1 << 20)])  # never read
        accepted = 60 - server.stats().undeliverable
        assert 0 < accepted <= 2 * queue + 2, accepted  # (ZeroMQ counts its high-water mark loosely)
    finally:
        runtime.close()


# --- 13b: the learner's priorities ---------------------------------------------------------------------
def test_priorities_the_replay_server_could_not_take_are_counted_and_reported():
    from types import SimpleNamespace

    from learner.service import LearnerService

    class Saturated:
        def send(self, *args, **kwargs):
            raise zmq.Again()

    reports = []
    service = LearnerService.__new__(LearnerService)
    step = lambda *batch: ({"loss": 1.0, "q_mean": 0.5}, np.ones(len(batch[1]), np.float32))  # noqa: E731
    service.learner = SimpleNamespace(updates=0, step=step, beta=lambda: 0.4, optimizer=SimpleNamespace(lr=1e-4))
    service.config = Config(prefetch_batches=2, publish_every=1000)
    service.rt = SimpleNamespace(log=lambda text: None, report=lambda kind, values: reports.append(values))
    service.batches = SimpleNamespace(sample_request=lambda *args: b"", torn=0, mirror_frames=0, mirror_restarts=0)
    service.dealer, service.in_flight, service.replay_stats = Saturated(), 0, ReplayStats()
    service._window, service._losses = {"loss": 0.0, "q_mean": 0.0, "n": 0}, (0.0, 0.0)
    service._maybe_checkpoint = lambda: None
    service.dropped = service.dropped_priorities = 0
    batch = {
        "frames": None,
        "actions": np.zeros(32, np.int64),
        "rewards": None,
        "bootstraps": None,
        "weights": None,
        "ids": np.arange(32),
    }
    for in_flight in (0, 2):  # priorities sent with the next request, or on their own
        service.in_flight = in_flight
        service._train({"stats": ReplayStats(), "batches": [batch]})
    assert service.dropped_priorities == 64
    service._window["n"], service.wait_s, service._rate_mark, service.weights_version = 0, 0.0, (0.0, 0), 1
    service.metrics = SimpleNamespace(scalar=lambda *args: None)
    service._log_progress(1.0)
    assert reports[-1].dropped_priorities == 64, "it reaches summary.json's learner section"


# --- 13c: log.txt -----------------------------------------------------------------------------------
def test_failed_log_txt_writes_are_reported_first_then_every_30_s_with_a_count(tmp_path, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(log_limit.time, "monotonic", lambda: now[0])
    log = episode_log.EpisodeLog(str(tmp_path / "missing" / "log.txt"))
    episode = EpisodeReport(reward=1.0, steps=10, x_pos=40, epsilon=0.5)
    messages = []
    for _ in range(5):
        messages.append(log.write(1, episode))
        now[0] += 1.0
    assert messages[0].startswith(f"could not write {tmp_path}") and messages[1:] == [None] * 4
    now[0] += 30.0
    again = log.write(1, episode)
    assert again is not None and again.endswith("(6 failed writes so far)"), again
    assert log.write(1, episode) is None


# --- 13d: the authenticator thread ------------------------------------------------------------------
def kill_authenticator(transport: Transport, keys_dir: str, address: str) -> None:
    """Make the ZAP handler raise, as a bug or a full disk would, and knock so that it runs."""

    async def broken(msg):
        raise RuntimeError("the ZAP handler broke")

    transport._authenticator.handle_zap_message = broken
    client = Transport(1 << 20, load_keys(os.path.join(keys_dir, "actor"), False, True))
    client.socket(zmq.PUSH, connect=address, link="replay-in")
    try:
        assert wait_until(lambda: not transport._authenticator.is_alive()), "the authenticator thread did not die"
    finally:
        client.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread's death, on purpose
def test_a_dead_authenticator_thread_fails_check_links_and_close_does_not_hang(tmp_path):
    create_keys(str(tmp_path))
    address = f"tcp://127.0.0.1:{free_base_port()}"
    transport = Transport(1 << 20, load_keys(str(tmp_path / "learner"), True, False))
    try:
        transport.socket(zmq.PULL, bind=address, link="replay-in")
        transport.check_links()
        kill_authenticator(transport, str(tmp_path), address)
        with pytest.raises(TransportError, match="authenticator thread .* stopped, so keys would no longer be checked"):
            transport.check_links()
    finally:
        closing = threading.Thread(target=transport.close, daemon=True)
        closing.start()
        closing.join(10)
        assert not closing.is_alive(), "close() hangs on the dead thread's pipe"


def _role_whose_authenticator_dies(runtime, run_dir: str) -> None:
    """A role that binds a keyed link and checks its links as every role's loop does."""
    address = f"tcp://127.0.0.1:{runtime.config.base_port}"
    runtime.transport.socket(zmq.PULL, bind=address, link="replay-in")
    kill_authenticator(runtime.transport, run_dir, address)
    for _ in range(100):
        runtime.check_links()
        time.sleep(0.05)


@pytest.mark.slow
def test_a_role_whose_authenticator_thread_died_stops_and_says_why(tmp_path):
    create_keys(str(tmp_path))
    keys = load_keys(str(tmp_path / "learner"), True, False)
    transport = Transport(1 << 20)
    reports = transport.socket(zmq.PULL, bind=f"ipc://{tmp_path}/reports")
    config = Config(env=TEST_ENV_ID, base_port=free_base_port())
    context = mp.get_context("spawn")  # as the launcher starts roles
    stop = context.Event()  # referenced until the child has it (start() lets go of its args)
    role = context.Process(
        target=run_role,
        args=(
            _role_whose_authenticator_dies,
            "replay",
            0,
            config.to_dict(),
            str(tmp_path),
            stop,
            os.getpid(),
            None,
            f"ipc://{tmp_path}/reports",
            keys.to_dict(),
        ),
    )
    role.start()
    try:
        role.join(60)
        assert role.exitcode == 1, "the role stops, as a failed one"
        texts = []
        while reports.poll(1000):
            msg = decode(reports.recv(), 1 << 20)
            texts.append((msg["kind"], msg.get("text", "")))
        assert ("log", "background thread zap-authenticator stopped: RuntimeError: the ZAP handler broke") in texts
        assert texts[-1][0] == "failed" and "authenticator thread (zap-authenticator) stopped" in texts[-1][1], texts
    finally:
        if role.is_alive():
            role.kill()
        transport.close()


# --- 15c: refusal lines -------------------------------------------------------------------------------
def test_refusal_lines_are_limited_per_reason_so_an_impostor_is_not_hidden_behind_another_reason():
    """A stream of one kind of refusal (a keyless client retrying) used to take the link's one line per 30 s,
    so an impostor's "not authorized" with its address never showed."""
    from common.transport import Refusal

    config = Config(env=TEST_ENV_ID, base_port=free_base_port())
    runtime = RoleRuntime("replay", 0, config, StopAtCap(), os.getppid())
    try:
        logs, seen = [], []
        runtime.log = logs.append
        runtime.transport.check_links = lambda: seen.pop(0) if seen else []
        keyless = Refusal("replay-in", "tcp://0.0.0.0:47555", True, "security mismatch")
        impostor = Refusal("replay-in", "tcp://0.0.0.0:47555", True, "the key is not authorized", "10.0.0.2")
        seen += [[keyless], [keyless, impostor], [keyless, impostor]]
        for _ in range(3):
            runtime.check_links()
        assert logs == [
            "refused a connection to replay-in (tcp://0.0.0.0:47555): security mismatch",
            "refused a connection to replay-in (tcp://0.0.0.0:47555) from 10.0.0.2: the key is not authorized",
        ]
    finally:
        runtime.close()


# --- 15b: a wrong socket type ----------------------------------------------------------------------
def test_a_socket_of_the_wrong_type_is_not_blamed_on_the_keys_alone(tmp_path):
    create_keys(str(tmp_path))
    address = f"tcp://127.0.0.1:{free_base_port()}"
    server = Transport(1 << 20, load_keys(str(tmp_path / "learner"), True, False))
    client = Transport(1 << 20, load_keys(str(tmp_path / "actor"), False, True))
    try:
        server.socket(zmq.PUB, bind=address, link="weights")  # e.g. the weights port given as replay-in
        client.socket(zmq.PUSH, connect=address, link="replay-in")
        refusals = []
        assert wait_until(lambda: refusals.extend(client.check_links()) or refusals), "no refusal seen"
        assert "keys" in refusals[0].reason and "not this link's kind of socket" in refusals[0].reason
    finally:
        client.close()
        server.close()


def test_a_keyless_client_is_told_it_is_a_security_mismatch(tmp_path):
    create_keys(str(tmp_path))
    address = f"tcp://127.0.0.1:{free_base_port()}"
    server, client = Transport(1 << 20, load_keys(str(tmp_path / "learner"), True, False)), Transport(1 << 20)
    try:
        server.socket(zmq.PULL, bind=address, link="replay-in")
        client.socket(zmq.PUSH, connect=address, link="replay-in")
        reasons = []  # the side that reads the other's greeting first knows; the other is just cut off

        def mismatch() -> bool:
            reasons.extend(r.reason for r in server.check_links() + client.check_links())
            return any(
                r.startswith("security mismatch: one side has CurveZMQ keys and the other has none") for r in reasons
            )

        assert wait_until(mismatch), reasons
    finally:
        client.close()
        server.close()


# --- 15a and 15c: a restarted actor ----------------------------------------------------------------
def restarted_actor(tmp_path, restarts: int, **start):
    """An actor as the launcher restarts it: counters continued, and its restart count."""
    from actor.actor import Actor

    config = Config(
        env=TEST_ENV_ID,
        envs_per_actor=1,  # one seed to check
        headless=True,
        video=False,
        base_port=free_base_port(),
        eval_every_episodes=0,
        max_episodes=4,
        report_interval_s=0.05,
    )
    stop = StopAtCap()
    runtime = RoleRuntime("actor", 0, config, stop, os.getppid(), ActorStart(**start, restarts=restarts))
    logs, reports = [], []
    runtime.log = logs.append
    runtime.report = lambda kind, values, text=None: reports.append((kind, values))
    stop.actor = Actor(runtime, str(tmp_path))
    return stop.actor, runtime, logs, reports


def test_a_restarted_actors_rates_count_only_its_own_steps_and_time(tmp_path):
    actor, runtime, _, reports = restarted_actor(
        tmp_path, 1, actor_steps=5_000_000, session_steps=5_000_000, episodes=0
    )
    try:
        actor.run()
    finally:
        actor.close()
        runtime.close()
    rates = [values.steps_per_s for kind, values in reports if kind == "progress"]
    played = actor.session_steps - 5_000_000
    assert len(rates) >= 2 and played > 0
    assert max(rates) < 100_000, f"{rates[:3]}: steps from before the restart counted as this process's"


def test_a_restarted_actor_gets_another_seed_and_says_so(tmp_path):
    from actor.actor import actor_seed

    seeds = {
        (seed, actor, restarts): actor_seed(seed, actor, restarts)
        for seed in (0, 1)
        for actor in (0, 1)
        for restarts in (0, 1, 2)
    }
    assert len(set(seeds.values())) == len(seeds) - 1, "only seed 0 actor 1 and seed 1 actor 0 share, as before"
    assert seeds[(1, 1, 0)] == 2 and actor_seed(1, 1, 2) == seeds[(1, 1, 2)], "first starts keep seed + actor"
    draws, lines = {}, {}
    for restarts in (0, 2):
        actor, runtime, logs, _ = restarted_actor(tmp_path, restarts)
        try:
            draws[restarts], lines[restarts] = actor.slots[0].rng.random(4).tolist(), logs[0]
            assert actor.slots[0].seed == seeds[(0, 0, restarts)]
        finally:
            actor.close()
            runtime.close()
    assert draws[0] != draws[2]
    assert "restart" not in lines[0] and lines[2].endswith(f"; restart 2: a new seed, {seeds[(0, 0, 2)]}")


def test_the_launcher_passes_the_restart_count_to_a_restarted_actor():
    from launcher.resume import ResumePlan
    from launcher.status import RunStatus
    from launcher.supervisor import Supervisor

    supervisor = Supervisor.__new__(Supervisor)
    supervisor.config, supervisor.resume, supervisor.restarts, supervisor.failures = Config(), ResumePlan(), {}, {}
    supervisor.status = RunStatus(1000)
    supervisor.console = type("Console", (), {"say": lambda self, *args, **kwargs: None})()
    started = []
    supervisor._start = lambda role, index, start: started.append(start)
    for _ in range(2):
        supervisor._restart_actor("actor-0", type("Proc", (), {"exitcode": -9})())
    assert [start.restarts for start in started] == [1, 2]
