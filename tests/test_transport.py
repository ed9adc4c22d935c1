"""Transport: the ipc socket files a process bound are removed when it closes (ZeroMQ leaves them in
the temporary folder), but never one that a later bind of the same path made."""
import os

import zmq

from common.transport import Transport


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
    os.unlink(path)                     # as if its owner had died and another run took the path
    second = Transport(1 << 20)
    second.socket(zmq.PULL, bind=f"ipc://{path}")
    first.close()
    assert path.exists(), "the other run's socket file was removed"
    second.close()
    assert not path.exists()
