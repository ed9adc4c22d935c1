"""The channel table (common/topology.py) is the one description of the channels: the README's diagram
draws it, the protocol's messages all travel on it, and the roles' real sockets are what it says."""

import os
import re

import pytest
import zmq

from common.addresses import PORT_OFFSETS
from common.config import TEST_ENV_ID, Config
from common.protocol import SCHEMAS
from common.runtime import RoleRuntime
from common.topology import CHANNELS, Channel, bound_by
from tests.harness import REPO, free_base_port

README = (REPO / "README.md").read_text()
HOW_IT_WORKS = README[README.index("## How it works") :]
HOW_IT_WORKS = HOW_IT_WORKS[: HOW_IT_WORKS.index("\n## ", 1)]
DIAGRAM = HOW_IT_WORKS.split("```")[1]
# A channel's label in the diagram: "replay_in +0: PUSH -> PULL*" (* marks the side that binds).
LABEL = re.compile(r"([a-z_]+) (\+\d+|\(no port\)): ([A-Z]+\*?) -> ([A-Z]+\*?)")


def label(ch: Channel) -> str:
    """How the diagram names a channel: the side that speaks first (the connectors, unless they only listen)
    on the left, the binder's socket starred."""
    first, second = (ch.connectors, ch.binder) if ch.connectors.sends else (ch.binder, ch.connectors)
    where = f"+{ch.port_offset}" if ch.port_offset is not None else "(no port)"
    star = {id(ch.binder): "*", id(ch.connectors): ""}
    return f"{ch.name} {where}: {first.socket}{star[id(first)]} -> {second.socket}{star[id(second)]}"


def test_the_readme_diagram_draws_the_table():
    drawn = sorted(f"{name} {where}: {a} -> {b}" for name, where, a, b in LABEL.findall(DIAGRAM))
    assert drawn == sorted(label(ch) for ch in CHANNELS.values())
    assert "* binds" in DIAGRAM and "common/topology.py" in HOW_IT_WORKS


def test_port_offsets_are_the_tables_and_unchanged():
    assert PORT_OFFSETS == {"replay_in": 0, "replay_sample": 1, "weights": 2}
    assert bound_by("replay") == ["replay_in", "replay_sample"] and bound_by("learner") == ["weights"]
    assert bound_by("launcher") == [], "the report channel has no port to check"


def test_every_message_travels_on_one_channel_from_a_role_there():
    sent = [kind for ch in CHANNELS.values() for side in (ch.binder, ch.connectors) for kind in side.sends]
    assert sorted(sent) == sorted(SCHEMAS), "each message kind of common/protocol.py on exactly one channel"
    for ch in CHANNELS.values():
        assert len(ch.binder.roles) == 1, f"{ch.name}: one role binds"
        for side in (ch.binder, ch.connectors):
            assert set(side.roles) <= {"actor", "learner", "replay", "launcher"}
            assert hasattr(zmq, side.socket) and all(hasattr(zmq, o) for o, _ in side.options)
        assert all(hasattr(Config, f) for f in ch.remote)


# --- the roles' real sockets ---------------------------------------------------------------------
@pytest.fixture
def sockets(tmp_path, keep_process_hooks):
    """Every role's sockets, built as the roles build them: {(channel, binds?): [(socket, transport)]}."""
    from actor.actor import Actor
    from launcher.supervisor import Supervisor
    from learner.service import LearnerService
    from replay_server.server import ReplayServer

    config = Config(
        env=TEST_ENV_ID,
        base_port=free_base_port(),
        replay_capacity=256,
        learning_starts=256,
        samples_per_insert=4,  # pinned ratio: the actors' queue is 4 chunks, not ZeroMQ's default
        device="cpu",
        headless=True,
        video=False,
        acting_precision="float32",
        runs_dir=str(tmp_path / "runs"),
    )
    supervisor = Supervisor(config, role="all")
    runtimes = {
        role: RoleRuntime(role, 0, config, None, os.getppid(), reports_address=supervisor.reports_address)
        for role in ("replay", "learner", "actor")
    }
    replay = ReplayServer(runtimes["replay"], str(tmp_path))
    learner = LearnerService(runtimes["learner"], str(tmp_path))
    actor = Actor(runtimes["actor"], str(tmp_path))
    try:
        found = {
            ("replay_in", True): [(replay.pull, runtimes["replay"].transport)],
            ("replay_sample", True): [(replay.router, runtimes["replay"].transport)],
            ("replay_sample", False): [(learner.dealer, runtimes["learner"].transport)],
            ("weights", True): [(learner.pub, runtimes["learner"].transport)],
            ("replay_in", False): [(actor.push, runtimes["actor"].transport)],
            ("weights", False): [(actor.sub, runtimes["actor"].transport)],
            ("reports", True): [(supervisor.reports, supervisor.transport)],
            ("reports", False): [(rt._reports, rt.transport) for rt in runtimes.values()],
        }
        yield config, found
    finally:
        actor.close()
        learner.batches.close()
        learner.metrics.close()
        for runtime in runtimes.values():
            runtime.close()
        supervisor._finish()


def test_each_roles_sockets_are_the_tables(sockets):
    config, found = sockets
    assert set(found) == {(ch.name, binds) for ch in CHANNELS.values() for binds in (True, False)}
    for (name, binds), socks in found.items():
        ch = CHANNELS[name]
        side = ch.binder if binds else ch.connectors
        hwm = side.hwm(config) if callable(side.hwm) else side.hwm or 1000
        for sock, transport in socks:
            where = f"{name} ({'binder' if binds else 'connector'})"
            assert sock.type == getattr(zmq, side.socket), where
            assert (sock.getsockopt(zmq.SNDHWM), sock.getsockopt(zmq.RCVHWM)) == (hwm, hwm), where
            monitored = transport._links[sock].channel if sock in transport._links else None  # keys and monitor
            assert monitored == ch.link, where
            options = dict(side.options)
            if "CONFLATE" in options:
                assert sock.getsockopt(zmq.CONFLATE) == options["CONFLATE"], where
            if "ROUTER_MANDATORY" in options:  # not readable: a reply to no one raises instead of vanishing
                with pytest.raises(zmq.ZMQError):
                    sock.send_multipart([b"\0nobody", b"reply"], zmq.NOBLOCK)
    assert CHANNELS["replay_in"].binder.hwm(config) == config.actor_queue_chunks() == 4
