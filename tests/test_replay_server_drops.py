"""The replay server's receive loop: whatever a handler raises, that message is dropped and counted
(the reason logged, rate-limited), and the loop goes on to the next one."""

import pytest
import zmq

from common.protocol import ProtocolError
from common.log_limit import LogLimit
from replay_server.server import ReplayServer


class FakeSocket:
    def __init__(self, messages):
        self.messages = list(messages)

    def recv_multipart(self, flags, copy=True):
        if not self.messages:
            raise zmq.Again()
        return self.messages.pop(0)


def bare_server(logs: list) -> ReplayServer:
    """Only what _drain and _drop use (no sockets, no buffer)."""
    server = ReplayServer.__new__(ReplayServer)
    server.counters = {"dropped": 0}
    server._drop_log = LogLimit()
    server.rt = type("Runtime", (), {"log": staticmethod(logs.append)})()
    return server


@pytest.mark.parametrize(
    "error",
    [
        TypeError("len() of unsized object"),
        KeyError("actions"),
        IndexError("x"),
        ProtocolError("bad"),
        ZeroDivisionError("division by zero"),
    ],
)
def test_any_handler_error_drops_and_counts_that_message_only(error):
    logs, handled = [], []

    def handler(parts):
        if parts == [b"bad"]:
            raise error
        handled.append(parts)

    server = bare_server(logs)
    server._drain(FakeSocket([[b"bad"], [b"good"], [b"bad"], [b"good"]]), handler, limit=64)
    assert handled == [[b"good"], [b"good"]]
    assert server.counters["dropped"] == 2
    assert len(logs) == 1 and "dropped a bad message" in logs[0], "one line, then at most one per 30 s"
    if not isinstance(error, ProtocolError):
        assert type(error).__name__ in logs[0]


def sample_server(logs: list) -> ReplayServer:
    """What _on_learner_message needs for sample requests (frames do not live in shared memory)."""
    from common.config import Config

    server = bare_server(logs)
    server.config = Config()
    server.pending = __import__("collections").deque()
    server.buffer = type("Buffer", (), {"ring": type("Ring", (), {"shared": False})()})()
    return server


def sample(batch_size: int = 256) -> bytes:
    from common.protocol import encode

    return encode("sample", batch_size=batch_size, beta=0.4)


def test_one_peer_cannot_crowd_out_the_learners_waiting_requests():
    """Before learning_starts requests wait. A flood from one peer is refused past its share, and a full
    queue refuses the newest, never evicting the learner's requests that came first."""
    server = sample_server([])
    server._drain(
        FakeSocket([[b"learner", sample()]] * 2 + [[b"flood", sample()]] * 200), server._on_learner_message, limit=1000
    )
    assert [p[0] for p in server.pending].count(b"learner") == 2
    assert [p[0] for p in server.pending].count(b"flood") == 8
    assert server.counters["dropped"] == 192
    for peer in range(100):  # many peers: the queue fills, the oldest requests stay
        server._drain(FakeSocket([[b"peer%d" % peer, sample()]]), server._on_learner_message, limit=1)
    assert len(server.pending) == 64 and server.pending[0][0] == b"learner" and server.pending[1][0] == b"learner"


def test_a_sample_whose_frames_cannot_fit_in_one_message_is_refused():
    """4096 transitions of 84x84 stacks with their frames are 231 MB: more than the 64 MiB a message may be."""
    server = sample_server(logs := [])
    server._drain(FakeSocket([[b"x", sample(4096)], [b"x", sample(1184)]]), server._on_learner_message, limit=10)
    assert [p[1] for p in server.pending] == [1184]
    assert server.counters["dropped"] == 1 and "exceed max_message_bytes" in logs[0]


@pytest.mark.parametrize(
    "name",
    ["x.replay.npz", "checkpoint-1.replay.npz.tmp", "../checkpoint-1.replay.npz", "checkpoint-1.replay.npz/x", ""],
)
def test_a_snapshot_is_written_only_under_a_name_the_learner_gives_and_cleans_up(name):
    """Any other name (a client's own choice) was written and never removed: refused as a bad message."""
    with pytest.raises(ProtocolError, match="snapshot: bad file name"):
        bare_server([])._start_snapshot(b"peer", name)


def test_the_learners_snapshot_names_pass_the_replay_servers_check():
    from common.run_files import SNAPSHOT_FILE, snapshot_name

    for base in ("checkpoint", "checkpoint_final"):
        assert SNAPSHOT_FILE.match(snapshot_name(base, 1796474748123456789))
