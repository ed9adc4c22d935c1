"""Where each channel binds and is reached (common/addresses.py): ipc between roles on one machine, tcp between
machines, following --bind, --learner and --replay."""

import pytest

from common.addresses import bind_address, bind_addresses, connect_address, ipc_only
from common.config import Config


@pytest.mark.parametrize(
    "host,base,expected",
    [
        ("127.0.0.1", 47_555, ["tcp://127.0.0.1:47555", "tcp://127.0.0.1:47556", "tcp://127.0.0.1:47557"]),
        ("localhost", 1, ["tcp://localhost:1", "tcp://localhost:2", "tcp://localhost:3"]),
        ("::1", 6000, ["tcp://[::1]:6000", "tcp://[::1]:6001", "tcp://[::1]:6002"]),
        ("fe80::1:2", 65_533, ["tcp://[fe80::1:2]:65533", "tcp://[fe80::1:2]:65534", "tcp://[fe80::1:2]:65535"]),
    ],
)
def test_bind_address_for_each_channel(host, base, expected):
    """Three consecutive ports in a fixed channel order; IPv6 hosts are bracketed."""
    config = Config(bind=host, base_port=base, local_ipc=False)
    channels = ["replay_in", "replay_sample", "weights"]
    assert [bind_address(config, c) for c in channels] == expected
    assert [connect_address(config, c) for c in channels] == expected, "no --learner: connect to ourselves"
    assert [bind_addresses(config, c) for c in channels] == [[e] for e in expected]


def test_roles_on_one_machine_use_ipc_only_in_this_users_folder():
    """A loopback host binds no TCP port: each channel is one ipc socket in this user's folder, where
    every role of this machine connects, also through a loopback --learner / --replay. A host other
    machines reach binds tcp as well, and roles here still connect over ipc."""
    import os
    import tempfile

    config = Config(base_port=47_555)
    ipc = f"ipc://{tempfile.gettempdir()}/mario-apex-{os.getuid()}/47556.sock"
    assert ipc_only(config) and bind_addresses(config, "replay_sample") == [ipc]
    assert connect_address(config, "replay_sample") == ipc
    joined = Config(learner="localhost:6000", replay="127.0.0.1")
    assert connect_address(joined, "weights").endswith("/6002.sock")
    assert connect_address(joined, "replay_in").endswith("/47555.sock"), "a loopback --learner or --replay: ipc"
    shared = Config(bind="0.0.0.0", base_port=47_555)
    assert not ipc_only(shared) and bind_addresses(shared, "replay_sample") == ["tcp://0.0.0.0:47556", ipc]
    assert connect_address(shared, "replay_sample") == ipc
    remote = Config(learner="10.0.0.2")
    assert connect_address(remote, "weights") == "tcp://10.0.0.2:47557", "other machines: tcp"
    assert connect_address(remote, "replay_sample").startswith("ipc://"), "the learner's own replay server: ipc"


def test_bind_address_unknown_channel_fails():
    with pytest.raises(KeyError):
        bind_address(Config(), "video")


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"bind": "0.0.0.0"}, ["tcp://127.0.0.1:47555", "tcp://127.0.0.1:47556", "tcp://127.0.0.1:47557"]),
        ({"bind": "::"}, ["tcp://[::1]:47555", "tcp://[::1]:47556", "tcp://[::1]:47557"]),
        ({"learner": "10.0.0.2"}, ["tcp://10.0.0.2:47555", "tcp://127.0.0.1:47556", "tcp://10.0.0.2:47557"]),
        ({"learner": "gpu-box:6000"}, ["tcp://gpu-box:6000", "tcp://127.0.0.1:47556", "tcp://gpu-box:6002"]),
        (
            {"learner": "[fe80::1]:7000", "replay": "10.0.0.3:8000"},
            ["tcp://10.0.0.3:8000", "tcp://10.0.0.3:8001", "tcp://[fe80::1]:7002"],
        ),
    ],
)
def test_connect_address_follows_learner_and_replay(changes, expected):
    """Actors reach replay-in at --replay (else --learner) and weights at --learner; a learner reaches
    replay-sample at --replay; a wildcard bind is reached over loopback."""
    config = Config(**changes, local_ipc=False)
    assert [connect_address(config, c) for c in ["replay_in", "replay_sample", "weights"]] == expected
