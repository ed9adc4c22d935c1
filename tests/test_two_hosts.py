"""A learner machine and an actor machine: two network namespaces joined by a veth pair (private test
addresses, nothing leaves this machine), with CurveZMQ keys over a real non-loopback link: the right
keys train, no keys and another key set are refused with a line on both sides.

Needs iproute2 and the right to create network namespaces (root, outside a restricted container),
as CI has; elsewhere it is skipped with ip's reason, and test_roles.py covers the roles over loopback
and test_keys.py the key checks on real loopback sockets.
"""

import contextlib
import os
import random
import re
import subprocess
import sys

import pytest

from tests.conftest import FAST_TEST_ENV, fake_tool, require
from tests.harness import REPO
from tests.test_roles import LEARNER_SIDE, weights_update

pytestmark = pytest.mark.slow


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"ip {' '.join(args)}: {result.stderr.strip()}"


@contextlib.contextmanager
def two_namespaces():
    """(learner namespace, its address), (actor namespace, its address); skips the test, with ip's
    reason, where this machine does not let us create a network namespace."""
    require("ip")
    tag = f"{os.getpid() % 100_000}{random.randint(0, 99)}"
    subnet = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
    hosts = [(f"mapx-l{tag}", f"{subnet}.1", f"vl{tag}"), (f"mapx-a{tag}", f"{subnet}.2", f"va{tag}")]
    created = []
    try:
        for namespace, _, _ in hosts:
            result = subprocess.run(["ip", "netns", "add", namespace], capture_output=True, text=True, timeout=30)
            if result.returncode != 0:
                pytest.skip(f"cannot create a network namespace here: {result.stderr.strip()}")
            created.append(namespace)
        _ip("link", "add", hosts[0][2], "type", "veth", "peer", "name", hosts[1][2])
        for namespace, address, device in hosts:
            _ip("link", "set", device, "netns", namespace)
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", device)
            _ip("-n", namespace, "link", "set", device, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
        yield [(namespace, address) for namespace, address, _ in hosts]
    finally:
        for namespace in created:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)


@pytest.fixture
def two_hosts():
    with two_namespaces() as hosts:
        yield hosts


def test_no_permission_for_namespaces_skips_with_ips_reason(monkeypatch, tmp_path):
    fake_tool(monkeypatch, tmp_path, "ip", "mount --make-shared /run/netns failed: Operation not permitted", status=1)
    with pytest.raises(pytest.skip.Exception) as skipped:
        with two_namespaces():
            pass
    assert skipped.value.msg == (
        "cannot create a network namespace here: mount --make-shared /run/netns failed: Operation not permitted"
    )


def test_learner_and_actor_on_two_hosts_with_keys(launch, tmp_path, two_hosts):
    (learner_ns, learner_ip), (actor_ns, _) = two_hosts
    for name in ("keys", "other"):
        result = subprocess.run(
            [sys.executable, "launch.py", "keys", str(tmp_path / name)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
    learner = launch(
        "--role",
        "learner",
        "--bind",
        learner_ip,
        "--keys",
        str(tmp_path / "keys" / "learner"),
        *LEARNER_SIDE,
        prefix=("ip", "netns", "exec", learner_ns),
    )
    address = f"{learner_ip}:{learner.base_port}"
    actors = launch(
        "--role",
        "actor",
        "--learner",
        address,
        "--keys",
        str(tmp_path / "keys" / "actor"),
        *FAST_TEST_ENV,
        prefix=("ip", "netns", "exec", actor_ns),
    )
    stranger = launch("--role", "actor", "--learner", address, *FAST_TEST_ENV, prefix=("ip", "netns", "exec", actor_ns))
    foreign = launch(
        "--role",
        "actor",
        "--learner",
        address,
        "--keys",
        str(tmp_path / "other" / "actor"),
        *FAST_TEST_ENV,
        prefix=("ip", "netns", "exec", actor_ns),
    )

    learner.wait_for_updates(20, timeout=120)
    actors.wait_for(lambda: weights_update(actors) > 0, 60, "weights crossing to the actor host")
    learner.wait_for(lambda: learner.status_value("replay") > 2000, 60, "the replay memory growing")
    for refused in (stranger, foreign):  # no keys, and another key set
        refused.wait_for(lambda: "refused this connection" in refused.output(), 30, "the refusal on the actor side")
        assert re.search(
            r"\[actor-0\] tcp://[\d.]+:\d+ \((replay-in|weights)\) refused this connection: ", refused.output()
        ), refused.output()
    learner.wait_for(
        lambda: len(re.findall(r"refused a connection to (replay-in|weights)", learner.output())) >= 2,
        30,
        "refusals on the learner side",
    )
    assert weights_update(stranger) == 0 and weights_update(foreign) == 0, "refused actors never get weights"
    updates = learner.status_value("updates")
    learner.wait_for_updates(updates + 10)  # training goes on
    for refused in (stranger, foreign):
        refused.interrupt()
        assert refused.wait(10) == 130, refused.output()

    learner.interrupt()  # the learner side first: final checkpoint, actors play on
    assert learner.wait(10) == 130, learner.output()
    assert (learner.run_dir / "checkpoint_final.pth").exists()
    actors.wait_for(lambda: "the learner stopped" in actors.output(), 20, "the actors hearing the learner stop")
    episodes = len(actors.log_lines())
    actors.wait_for_episodes(episodes + 20)
    actors.interrupt()
    assert actors.wait(10) == 130, actors.output()
    for run in (learner, actors, stranger, foreign):
        assert "exited unexpectedly" not in run.output() and "Traceback" not in run.output()
