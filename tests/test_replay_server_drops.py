"""The replay server's receive loop: whatever a handler raises, that message is dropped and counted
(the reason logged, rate-limited), and the loop goes on to the next one."""
import pytest
import zmq

from common.protocol import ProtocolError
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
    server._last_drop_log = 0.0
    server.rt = type("Runtime", (), {"log": staticmethod(logs.append)})()
    return server


@pytest.mark.parametrize("error", [TypeError("len() of unsized object"), KeyError("actions"), IndexError("x"),
                                   ProtocolError("bad"), ZeroDivisionError("division by zero")])
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
    assert len(logs) == 1 and "dropped a bad message" in logs[0], "one line, then at most one per DROP_LOG_S"
    if not isinstance(error, ProtocolError):
        assert type(error).__name__ in logs[0]
