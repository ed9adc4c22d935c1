"""CurveZMQ keys and secured links, in one process: who gets in, and what each side is told."""

import time

import pytest
import zmq

from common.keys import KeysError, create_keys, load_keys
from common.transport import SETTLED_S, Transport
from tests.harness import free_base_port


def test_create_keys_writes_one_folder_per_side(tmp_path):
    learner, actor = create_keys(str(tmp_path / "k"))
    assert sorted(p.name for p in (tmp_path / "k" / "learner").iterdir()) == [
        "authorized_clients",
        "client.key",
        "client.key_secret",
        "server.key",
        "server.key_secret",
    ]
    assert sorted(p.name for p in (tmp_path / "k" / "actor").iterdir()) == [
        "client.key",
        "client.key_secret",
        "server.key",
    ]
    assert sorted(p.name for p in (tmp_path / "k" / "learner" / "authorized_clients").iterdir()) == [
        "actor.key",
        "learner.key",
    ]
    for secret in (tmp_path / "k").rglob("*.key_secret"):
        assert secret.stat().st_mode & 0o777 == 0o600, secret
    server = load_keys(learner, server=True, client=True)
    client = load_keys(actor, server=False, client=True)
    assert client.known_server == server.server_public and client.client_secret != server.client_secret
    with pytest.raises(KeysError, match="already exists"):
        create_keys(str(tmp_path / "k"))


@pytest.mark.parametrize(
    "side, server, client, message",
    [
        ("actor", True, False, "no server.key_secret for the learner side"),
        ("learner/authorized_clients", False, True, "no client.key_secret for the actor side"),
        ("missing", False, True, "no such folder"),
    ],
)
def test_load_keys_says_what_is_missing(tmp_path, side, server, client, message):
    create_keys(str(tmp_path))
    with pytest.raises(KeysError, match=message):
        load_keys(str(tmp_path / side), server=server, client=client)


def test_load_keys_rejects_a_damaged_key_file(tmp_path):
    create_keys(str(tmp_path))
    (tmp_path / "actor" / "client.key_secret").write_text("garbage\n")
    with pytest.raises(KeysError, match="client.key_secret: (not a readable CurveZMQ key file|holds no secret key)"):
        load_keys(str(tmp_path / "actor"), server=False, client=True)


def _exchange(server_keys, client_keys):
    """One PULL server and one PUSH client over loopback; returns (message received or None,
    refusals the server saw, refusals the client saw)."""
    address = f"tcp://127.0.0.1:{free_base_port()}"
    server, client = Transport(1 << 20, server_keys), Transport(1 << 20, client_keys)
    try:
        pull = server.socket(zmq.PULL, bind=address, link="replay-in")
        push = client.socket(zmq.PUSH, connect=address, link="replay-in")
        push.send(b"hello", zmq.NOBLOCK)
        received, server_refusals, client_refusals = None, [], []
        deadline = time.monotonic() + 30  # generous: either outcome ends the wait, a loaded machine is slow
        while time.monotonic() < deadline and received is None and not (server_refusals and client_refusals):
            if pull.poll(50):
                received = pull.recv()
            server_refusals += server.check_links()
            client_refusals += client.check_links()
        server_refusals += server.check_links()
        time.sleep(SETTLED_S + 0.1)  # a connection counts once it has settled
        server_refusals += server.check_links()
        peers = server.peers(pull)
        while received is not None and peers == 0 and time.monotonic() < deadline:  # settling, under load
            time.sleep(0.05)
            server_refusals += server.check_links()
            peers = server.peers(pull)
        return received, server_refusals, client_refusals, peers
    finally:
        client.close()
        server.close()


def test_the_right_keys_connect_and_encrypt(tmp_path):
    learner, actor = create_keys(str(tmp_path))
    received, server_refusals, client_refusals, peers = _exchange(
        load_keys(learner, True, False), load_keys(actor, False, True)
    )
    assert received == b"hello" and not server_refusals and not client_refusals and peers == 1


def test_a_foreign_key_is_refused_on_both_sides(tmp_path):
    learner, _ = create_keys(str(tmp_path / "a"))
    _, stranger = create_keys(str(tmp_path / "b"))
    received, server_refusals, client_refusals, _ = _exchange(
        load_keys(learner, True, False), load_keys(stranger, False, True)
    )
    assert received is None
    assert server_refusals and server_refusals[0].message().startswith("refused a connection to replay-in (tcp://")
    assert client_refusals and "refused this connection" in client_refusals[0].message()
    assert client_refusals[0].message().endswith("; retrying")


def test_an_unauthorized_client_key_is_refused_and_its_address_named(tmp_path):
    """It knows the server's key but is not among the authorized clients: the ZAP handler turns it away,
    and the server's line names where it came from (ZeroMQ's refusal event does not)."""
    learner, actor = create_keys(str(tmp_path))
    (tmp_path / "learner" / "authorized_clients" / "actor.key").unlink()
    received, server_refusals, _, peers = _exchange(load_keys(learner, True, False), load_keys(actor, False, True))
    assert received is None and peers == 0
    assert server_refusals and server_refusals[0].peer == "127.0.0.1"
    assert server_refusals[0].message().endswith(") from 127.0.0.1: the key is not authorized (wrong --keys?)")


def test_no_keys_against_a_keyed_server_is_refused(tmp_path):
    learner, _ = create_keys(str(tmp_path))
    received, server_refusals, client_refusals, _ = _exchange(load_keys(learner, True, False), None)
    assert received is None
    assert server_refusals and "(--keys)" in server_refusals[0].reason
    assert client_refusals and "(--keys)" in client_refusals[0].reason


def test_no_keys_anywhere_is_plain_zeromq():
    received, server_refusals, client_refusals, peers = _exchange(None, None)
    assert received == b"hello" and not server_refusals and not client_refusals and peers == 1


def test_only_the_authorized_client_counts_while_a_stranger_keeps_retrying(tmp_path):
    """Refused connections (keyless clients connecting anew every 100 ms) never count as peers, however
    their handshake events interleave with the authorized client's. (libzmq itself gives up on a
    refused peer after a few tries, so the strangers open new sockets to keep knocking.)"""
    learner, actor = create_keys(str(tmp_path))
    address = f"tcp://127.0.0.1:{free_base_port()}"
    server = Transport(1 << 20, load_keys(learner, True, False))
    authorized, strangers = Transport(1 << 20, load_keys(actor, False, True)), Transport(1 << 20, None)
    try:
        pull = server.socket(zmq.PULL, bind=address, link="replay-in")
        authorized.socket(zmq.PUSH, connect=address, link="replay-in")
        counts, refusals, knocked = [], 0, 0.0
        started = time.monotonic()  # at least 3 settling times, and until the strangers were refused (load)
        while time.monotonic() - started < 3 * SETTLED_S or (refusals < 4 and time.monotonic() - started < 20):
            if time.monotonic() - knocked >= 0.1:
                strangers.socket(zmq.PUSH, connect=address)
                knocked = time.monotonic()
            refusals += len(server.check_links())
            counts.append(server.peers(pull))
            time.sleep(0.02)
        assert refusals >= 4, "the strangers kept retrying"
        assert counts[-1] == 1 and max(counts) == 1, counts
    finally:
        for transport in (strangers, authorized, server):
            transport.close()
