"""The launcher's report channel: private to this user, and a bad report is dropped and counted,
never raised (it used to stop the run, or hang the launcher inside _stop_all)."""

import json
import math
import os
import stat
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import msgpack
import pytest
import zmq

from common.config import Config
from common.protocol import PROTOCOL_VERSION, encode
from common.records import STALL_END, ActorDone, ActorProgress, EvalResult, LearnerProgress, ReplayStats, as_map
from launcher.console import Console
from launcher.supervisor import Supervisor
from tests.conftest import kept_process_hooks
from tests.harness import free_base_port

EPISODE = {
    "actor": 1,
    "episode": 3,
    "reward": 2.5,
    "steps": 40,
    "x_pos": 300,
    "flag": False,
    "epsilon": 0.5,
    "actor_steps": 120,
    "end": 2,
    "session_steps": 120,
    "level": 0,
}
LEARNER = as_map(LearnerProgress(updates=1))


def report(role="actor", index=1, kind="episode", values=None, **fields) -> bytes:
    return encode("report", role=role, index=index, kind=kind, values=EPISODE if values is None else values, **fields)


def raw_report(**changes) -> bytes:
    """A report whose fields encode() would not check (e.g. a negative index)."""
    body = {
        "v": PROTOCOL_VERSION,
        "t": "report",
        "role": "actor",
        "index": 1,
        "kind": "episode",
        "values": EPISODE,
        **changes,
    }
    return msgpack.packb(body, use_bin_type=True)


# Structurally valid reports that are wrong in what they say.
BAD_REPORTS = {
    "episode with empty values": report(values={}),
    "episode without epsilon": report(values={k: v for k, v in EPISODE.items() if k != "epsilon"}),
    "NaN updates": report("learner", 0, "progress", {**LEARNER, "updates": math.nan}),
    "inf reward": report(values={**EPISODE, "reward": math.inf}),
    "negative updates": report("learner", 0, "progress", {**LEARNER, "updates": -5}),
    "a misspelt field": report(values={**{k: v for k, v in EPISODE.items() if k != "epsilon"}, "epsilom": 0.5}),
    "a field no record has": report(values={**EPISODE, "bonus": 1}),
    "learner progress lacking a field": report("learner", 0, "progress", {"updates": 1}),
    "float steps": report(values={**EPISODE, "steps": 40.5}),
    "bool as a count": report(values={**EPISODE, "episode": True}),
    "count over 2**63": report(values={**EPISODE, "actor_steps": 2**63}),
    "unknown kind": report(kind="exec", values={}),
    "unknown role": report(role="wizard", index=0, kind="progress", values=LEARNER),
    "episode from the learner": report(role="learner", index=0),
    "actor index out of range": report(index=2, values={**EPISODE, "actor": 2}),
    "huge actor index": report(index=2**62, values={**EPISODE, "actor": 2**62}),
    "negative index": raw_report(index=-1),
    "learner index 1": report("learner", 1, "progress", LEARNER),
    "episode of another actor": report(index=0),
    "eval without env_steps": report(
        kind="eval", values={"actor": 1, "reward": 1.0, "steps": 3, "x_pos": 5, "flag": True}
    ),
    "done without episodes": report(kind="done", values={"steps": 5}),
    "replay progress without size": report(
        "replay", 0, "progress", {k: v for k, v in as_map(ReplayStats()).items() if k != "size"}
    ),
    "values not numbers": raw_report(values={"actor": "1"}),
    "not a report": encode("sample", batch_size=1, beta=0.5),
    "garbage": b"\x93\x01\x02",
}


@pytest.fixture
def supervisor(tmp_path):
    config = Config(
        env="MarioApexTest-v0",
        runs_dir=str(tmp_path),
        base_port=free_base_port(),
        actors=2,
        device="cpu",
        headless=True,
        video=False,
    )
    sup = Supervisor(config, role="all")
    sup.console = Console(0, interactive=False)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(sup.reports_address)
    yield sup, push
    push.close(linger=0)
    ctx.term()
    if not sup.transport.context.closed:
        sup._finish()


def send_and_drain(sup, push, messages: list[bytes]) -> None:
    """Send the messages and then a valid episode, and drain until that episode is in log.txt."""
    for raw in messages:
        push.send(raw)
    push.send(report())
    deadline = time.monotonic() + 30
    while sup.status.episodes == 0:
        assert time.monotonic() < deadline, "the valid episode never arrived"
        sup._drain_reports(100)


def test_report_socket_is_private_and_removed_at_exit(supervisor):
    """An ipc socket in a fresh 0700 directory of this user (no TCP port anyone on the machine can
    reach), gone once the launcher finishes."""
    sup, _ = supervisor
    assert sup.reports_address.startswith("ipc://")
    folder = os.path.dirname(sup.reports_address[len("ipc://") :])
    info = os.stat(folder)
    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
    sup._finish()
    assert not os.path.exists(folder)


@pytest.mark.parametrize("name", BAD_REPORTS)
def test_bad_report_is_dropped_and_counted(supervisor, name):
    sup, push = supervisor
    send_and_drain(sup, push, [BAD_REPORTS[name]])
    assert sup.status.dropped_reports == 1
    assert sup.status.episodes == 1 and sup.status.learner is None and sup.status.replay is None
    assert not sup.status.done_actors and not sup.failures
    assert len(open(sup.episode_log.path).read().splitlines()) == 1, "only the valid episode is logged"


def test_real_reports_are_accepted(supervisor):
    """What the roles send (see actor/actor.py, learner/service.py, replay_server/server.py) gets in."""
    sup, push = supervisor
    progress = [
        report(
            "actor",
            0,
            "progress",
            ActorProgress(
                actor_steps=10, session_steps=10, episodes=1, steps_per_s=5.0, epsilon=0.9, weights_version=1
            ),
        ),
        report("learner", 0, "progress", LearnerProgress(updates=7, weights_version=1, lr=1e-4, loss=0.25)),
        report("replay", 0, "progress", ReplayStats(size=5, inserted=5, actors=1, episodes=1, env_steps=5)),
        report("actor", 1, "eval", EvalResult(actor=1, reward=1.0, steps=3, x_pos=5, actor_steps=10, end=STALL_END)),
        report("actor", 0, "log", {}, text="hello"),
        report("actor", 1, "done", ActorDone(session_steps=5, episodes=1)),
    ]
    send_and_drain(sup, push, progress)
    assert sup.status.dropped_reports == 0
    assert sup.status.updates == 7 and sup.status.replay.size == 5 and sup.status.evaluations == 1
    assert sup.status.learner.loss == 0.25 and sup.status.actors[0].epsilon == 0.9
    assert sup.status.done_actors == {1}
    evals = [line for line in open(sup.episode_log.path).read().splitlines() if "] Eval " in line]
    # the run's env steps (actor 1's 10 and actor 0's 10), and the end the actor named
    assert len(evals) == 1 and evals[0].endswith("Env steps: 20, End: stall"), evals


def test_bad_reports_during_stop_neither_raise_nor_hang(supervisor):
    """Two bad reports waiting while the launcher stops: _stop_all drains them (dropped, counted),
    stops its processes and returns; summary.json has the count."""
    sup, push = supervisor
    sup.stop_events = {role: threading.Event() for role in ("actor", "learner", "replay")}
    sup.processes = {"actor-0": SimpleNamespace(name="actor-0", is_alive=lambda: False, exitcode=0)}
    push.send(BAD_REPORTS["episode with empty values"])
    push.send(BAD_REPORTS["NaN updates"])
    assert sup.reports.poll(30_000, zmq.POLLIN)
    sup._stop_all()  # drains what has arrived
    assert all(event.is_set() for event in sup.stop_events.values()) and sup.exit_code == 0
    deadline = time.monotonic() + 30
    while sup.status.dropped_reports < 2:
        assert time.monotonic() < deadline, "the second bad report never arrived"
        sup._drain_reports(100)
    assert sup.status.dropped_reports == 2
    sup._finish()
    summary = json.loads(open(os.path.join(sup.run_dir, "summary.json")).read())
    assert summary["dropped_reports"] == 2


def test_an_error_in_the_launcher_is_the_stop_reason_in_summary_json(supervisor, monkeypatch):
    """An exception the launcher did not foresee stops the run with exit status 1, and summary.json says why
    (it said stop_reason null and exit_code 0)."""
    sup, _ = supervisor

    def monitor():
        raise RuntimeError("something broke")

    monkeypatch.setattr(sup, "_start_all", lambda: None)
    monkeypatch.setattr(sup, "_monitor", monitor)
    monkeypatch.setattr(sup, "_nothing_ran", lambda: False)  # keep the folder, as a run that played would
    with kept_process_hooks(), pytest.raises(RuntimeError, match="something broke"):
        sup.run()  # (it sets the signal handlers)
    summary = json.loads((Path(sup.run_dir) / "summary.json").read_text())
    assert summary["stop_reason"] == "launcher error (RuntimeError: something broke)"
    assert summary["exit_code"] == 1
