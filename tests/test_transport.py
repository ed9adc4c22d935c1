"""Transport: the ipc socket files a process bound are removed when it closes (ZeroMQ leaves them in
the temporary folder), but never one that a later bind of the same path made; the channels' ipc
folder is this user's alone."""

import os
import stat
import tempfile

import pytest
import zmq

from common.addresses import bind_addresses, connect_address
from common.config import Config
from common.transport import Transport, TransportError


def test_bound_ipc_files_are_removed_at_close(tmp_path):
    path = tmp_path / "a.sock"
    transport = Transport(1 << 20)
    transport.socket(zmq.PULL, bind=[f"ipc://{path}", "tcp://127.0.0.1:*"])
    assert path.exists()
    transport.close()
    assert not path.exists()


def test_a_file_rebound_by_another_process_is_left_alone(tmp_path):
    path = tmp_path / "b.sock"
    first = Transport(1 << 20)
    first.socket(zmq.PULL, bind=f"ipc://{path}")
    os.unlink(path)  # as if its owner had died and another run took the path
    second = Transport(1 << 20)
    second.socket(zmq.PULL, bind=f"ipc://{path}")
    first.close()
    assert path.exists(), "the other run's socket file was removed"
    second.close()
    assert not path.exists()


def test_the_channels_folder_is_made_0700_and_a_loose_one_is_closed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    config = Config(base_port=47_555)
    folder = tmp_path / f"mario-apex-{os.getuid()}"
    for before in (None, 0o755):
        if before is not None:
            folder.chmod(before)
        transport = Transport(1 << 20)
        try:
            transport.socket(zmq.PULL, bind=bind_addresses(config, "replay_in"))
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700
            assert (folder / "47555.sock").exists()
        finally:
            transport.close()


@pytest.mark.parametrize("made_as", ["another user's folder", "a link to a folder"])
def test_a_channels_folder_of_another_users_is_refused_for_binding_and_connecting(tmp_path, monkeypatch, made_as):
    """Someone who made the folder first could listen in it as the learner: refused, with a way out."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folder = tmp_path / f"mario-apex-{os.getuid()}"
    if made_as == "a link to a folder":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        folder.symlink_to(tmp_path / "elsewhere")
    else:
        real_uid = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: real_uid + 1)  # the folder's owner is now someone else
        folder = tmp_path / f"mario-apex-{real_uid + 1}"
        folder.mkdir(mode=0o700)
    config = Config(base_port=47_555)
    transport = Transport(1 << 20)
    try:
        for kind, where in (
            (zmq.PULL, {"bind": bind_addresses(config, "replay_in")}),
            (zmq.PUSH, {"connect": connect_address(config, "replay_in")}),
        ):
            with pytest.raises(TransportError, match="is not a folder of this user's .* remove it, or set TMPDIR"):
                transport.socket(kind, **where)
    finally:
        transport.close()
