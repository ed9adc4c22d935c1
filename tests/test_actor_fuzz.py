"""Bad input at the actor's own socket: weights messages no actor may act with, published on a real PUB
socket between good ones. Each is ignored and counted (ActorProgress.dropped), told in a rate-limited
line, and the actor keeps playing with the weights it has until good ones come."""

import time

import msgpack
import numpy as np
import torch
import zmq

from common.addresses import bind_addresses
from common.config import TEST_ENV_ID, Config
from common.network import build_network, weights_to_arrays
from common.protocol import PROTOCOL_VERSION, encode
from tests.test_actor_loop import play

DEADLINE_S = 30  # generous: a loaded machine is slow


def _preferring(action: int) -> dict[str, np.ndarray]:
    """Weights whose action head always picks `action` (zero weights, a one-hot bias)."""
    net = build_network(Config(env=TEST_ENV_ID))
    with torch.no_grad():
        net.head[2].weight.zero_()
        net.head[2].bias.copy_(torch.eye(7)[action])
    return weights_to_arrays(net)


def _bad_weights(good: dict[str, np.ndarray]) -> list[bytes]:
    """Structurally valid messages and garbage that must not reach the policy."""
    name = next(iter(good))

    def changed(**arrays) -> bytes:
        return encode("weights", weights_version=9, weights_updates=900, tensors={**good, **arrays})

    missing = {k: v for k, v in good.items() if k != name}
    nan = good[name].copy()
    nan.flat[0] = np.nan
    inf = good[name].copy()
    inf.flat[-1] = -np.inf
    return [
        b"\x00garbage",
        msgpack.packb([1, 2, 3]),
        encode("weights", weights_version=9, weights_updates=900, tensors=missing),  # a parameter missing
        changed(extra=np.zeros(3, np.float32)),  # a parameter too many
        changed(**{name: good[name][:1]}),  # wrong shape
        changed(**{name: np.array(1.0, np.float32)}),  # 0-d
        changed(**{name: good[name].astype(np.float64)}),  # float64
        changed(**{name: nan}),  # NaN
        changed(**{name: inf}),  # -inf
        encode("weights", weights_version=-1, weights_updates=900, tensors=good),  # a negative version
        msgpack.packb(
            {"v": PROTOCOL_VERSION, "t": "weights", "weights_version": 9, "weights_updates": 900, "tensors": "no"},
            use_bin_type=True,
        ),
        encode("sample", batch_size=32, beta=0.5),  # a message type the actor never gets
    ]


def test_bad_weights_are_ignored_counted_and_told_once_while_good_ones_are_taken(tmp_path):
    first, last = _preferring(3), _preferring(5)
    bad = _bad_weights(first)
    told, states = [], []

    def publish(actor):
        log = actor.rt.log
        actor.rt.log = lambda text: (told.append(text), log(text))
        pub = actor.rt.transport.socket(zmq.PUB, bind=bind_addresses(actor.config, "weights"))
        try:
            deliver(
                actor,
                pub,
                encode("weights", weights_version=1, weights_updates=100, tensors=first),
                lambda: actor.weights_version,
                resend=True,
            )
            for i, message in enumerate(bad):
                deliver(actor, pub, message, lambda: actor.dropped, i + 1)
            states.append((weights_to_arrays(actor.net), actor.weights_version, actor.weights_updates))
            deliver(
                actor,
                pub,
                encode("weights", weights_version=2, weights_updates=200, tensors=last),
                lambda: actor.weights_version,
                2,
            )
        finally:
            pub.close(linger=0)

    actor, messages = play(tmp_path, publish, max_steps=60, epsilon_start=0.0, epsilon_end=0.0)
    assert actor.dropped == len(bad)
    [(arrays, version, updates)] = states
    assert (version, updates) == (1, 100) and arrays.keys() == first.keys()  # nothing bad reached the network
    assert all(np.array_equal(arrays[k], first[k]) for k in first)
    assert actor.weights_version == 2 and actor.weights_updates == 200
    ignored = [t for t in told if t.startswith("ignored bad weights")]
    assert len(ignored) == 1 and ignored[0].endswith("1 ignored so far"), told  # one line, not one each
    actions = [a for m in messages if m["t"] == "transitions" for a in m["actions"].tolist()]
    assert len(actions) == 60 and set(actions) == {5}


def deliver(actor, pub, message: bytes, counter, target: int = 1, resend: bool = False) -> None:
    """Poll until the actor has taken `message` (its counter reaches `target`). PUB drops what comes
    before the SUB connects, so the first message is sent `resend` until taken; after that the link
    delivers each message once, in order, so the others are sent once (a duplicate would count twice)."""
    deadline = time.monotonic() + DEADLINE_S
    pub.send(message)
    while counter() < target:
        assert time.monotonic() < deadline, f"the actor did not take message {target}"
        time.sleep(0.02)
        if resend:
            pub.send(message)
        actor._poll_weights()
    assert counter() == target
