"""The actor's quantized greedy policy: int8 rows round-trip, the int8/bfloat16 forward tracks the float32
network closely enough to pick the same actions, and the precision choice falls back to float32."""

import numpy as np
import pytest
import torch

from actor.acting_network import Int8Policy, choose_precision, make_policy, quantize_rows
from common.config import Config, ConfigError
from common.network import build_network, greedy_action


def random_net(seed: int, dueling: bool = True):
    torch.manual_seed(seed)
    return build_network(Config(dueling=dueling)).eval()


def observations(n: int, seed: int = 0) -> np.ndarray:
    """Frames with structure (a bright moving block on a gradient), not noise, like game screens."""
    rng = np.random.default_rng(seed)
    obs = np.broadcast_to(np.linspace(0, 120, 84, dtype=np.uint8), (n, 4, 84, 84)).copy()
    for i in range(n):
        for k in range(4):
            y, x = rng.integers(0, 70, 2)
            obs[i, k, y : y + 14, x : x + 10] = rng.integers(150, 256)
    return obs


def test_quantize_rows_round_trips_within_half_a_step_per_row():
    weight = torch.randn(64, 300) * torch.logspace(-3, 1, 64)[:, None]  # rows of very different scales
    q, scale = quantize_rows(weight)
    assert q.dtype == torch.int8 and q.shape == weight.shape and scale.shape == (64,)
    assert torch.all(q.abs().amax(dim=1) == 127)  # each row uses the whole range
    assert torch.all((q.float() * scale[:, None] - weight).abs() <= scale[:, None] / 2 + 1e-7)


@pytest.mark.parametrize("dueling", [True, False])
def test_the_int8_head_tracks_float32_and_picks_the_same_actions(dueling):
    net = random_net(1, dueling)
    with torch.no_grad():  # a spread of Q-values like a trained network's, not an initial one's
        net.head[2].weight.mul_(40)
    obs = observations(200)
    policy = Int8Policy(net)
    with torch.inference_mode():
        exact = net.head(net.features(torch.from_numpy(obs).float() / 255.0))
        approx = policy.head(torch.from_numpy(obs))
    spread = float(exact.std())
    assert float((approx - exact).abs().max()) < 0.04 * spread  # measured: 0.019 here
    top2 = exact.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.08 * spread  # no near-tie: the action must be the same
    assert clear.sum() > 120
    assert torch.equal(approx.argmax(1)[clear], exact.argmax(1)[clear])
    some = obs[clear.numpy()][:20]
    assert [int(policy(o[None])[0]) for o in some] == [greedy_action(net, o) for o in some]


def test_the_int8_policy_keeps_its_own_copy_of_the_weights():
    """The env thread may still act with it while new weights arrive: changing the network it was
    built from must not change it."""
    net = random_net(3)
    frames = torch.from_numpy(observations(8))
    policy = Int8Policy(net)
    with torch.inference_mode():
        before = policy.head(frames)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(-3.0)
    with torch.inference_mode():
        assert torch.equal(policy.head(frames), before)
        assert not torch.allclose(Int8Policy(net).head(frames), before)


def test_precision_choice():
    net = random_net(4)
    assert choose_precision(net, Config(acting_precision="float32")) == ("float32", "as configured")
    assert choose_precision(net, Config(acting_precision="int8")) == ("int8", "as configured")
    assert isinstance(make_policy(net, "int8"), Int8Policy)
    chosen, why = choose_precision(net, Config())
    assert chosen in ("int8", "float32") and "ms in int8" in why and "ms in float32" in why


def test_another_frame_size_and_stack_work_too():
    config = Config(frame_size=42, frame_stack=2, dueling=False)
    torch.manual_seed(6)
    net = build_network(config).eval()
    assert choose_precision(net, config.replace(acting_precision="int8"))[0] == "int8"
    obs = observations(4)[:, :2, 21:63, 21:63].copy()
    with torch.inference_mode():
        exact = net(torch.from_numpy(obs))  # Q itself: no dueling head
        assert float((Int8Policy(net).head(torch.from_numpy(obs)) - exact).abs().max()) < 0.04 * float(exact.std())


def test_a_network_of_another_layout_stays_float32():
    net = random_net(7)
    net.head = torch.nn.Sequential(net.head[0], torch.nn.Tanh(), net.head[2])
    assert choose_precision(net, Config(acting_precision="auto")) == (
        "float32",
        "int8 is not available here (the int8 policy supports QNetwork's layout only)",
    )


def test_without_the_int8_kernels_auto_and_int8_fall_back_to_float32(monkeypatch):
    def missing(self, frames):
        raise RuntimeError("could not run 'aten::_weight_int8pack_mm' with arguments from the 'CPU' backend\nmore")

    monkeypatch.setattr(Int8Policy, "head", missing)
    for requested in ("auto", "int8"):
        chosen, why = choose_precision(random_net(5), Config(acting_precision=requested))
        assert chosen == "float32"
        assert (
            why == "int8 is not available here (could not run 'aten::_weight_int8pack_mm' "
            "with arguments from the 'CPU' backend)"
        )


def test_a_bad_acting_precision_is_refused():
    with pytest.raises(ConfigError, match="acting_precision must be auto, float32 or int8, got 'fp8'"):
        Config(acting_precision="fp8")
