"""The actor's quantized greedy policy: int8 rows round-trip, the int8/bfloat16 forward tracks the float32
network closely enough to pick the same actions, and the precision choice falls back to float32."""
import numpy as np
import pytest
import torch

from actor.acting_network import Int8Policy, choose_precision, make_policy, quantize_rows
from actor.evaluate import greedy_action
from common.config import Config, ConfigError
from common.network import build_network

SHAPE = (4, 84, 84)


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
            obs[i, k, y:y + 14, x:x + 10] = rng.integers(150, 256)
    return obs


def test_quantize_rows_round_trips_within_half_a_step_per_row():
    weight = torch.randn(64, 300) * torch.logspace(-3, 1, 64)[:, None]      # rows of very different scales
    q, scale = quantize_rows(weight)
    assert q.dtype == torch.int8 and q.shape == weight.shape and scale.shape == (64,)
    assert int(q.abs().max()) == 127                          # each row uses the whole range
    assert torch.all((q.float() * scale[:, None] - weight).abs() <= scale[:, None] / 2 + 1e-7)


@pytest.mark.parametrize("dueling", [True, False])
def test_the_int8_head_tracks_float32_and_picks_the_same_actions(dueling):
    net = random_net(1, dueling)
    with torch.no_grad():            # a spread of Q-values like a trained network's, not an initial one's
        net.head[2].weight.mul_(40)
    obs = observations(200)
    policy = Int8Policy(net)
    with torch.inference_mode():
        exact = net.head(net.features(torch.from_numpy(obs).float() / 255.0))
        approx = policy.head(torch.from_numpy(obs))
    spread = float(exact.std())
    assert float((approx - exact).abs().max()) < 0.02 * spread
    top2 = exact.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.02 * spread       # no near-tie: the action must be the same
    assert clear.sum() > 150
    assert torch.equal(approx.argmax(1)[clear], exact.argmax(1)[clear])
    assert [policy(o) for o in obs[:20]] == [greedy_action(net, o) for o in obs[:20]]


def test_the_float32_policy_is_the_networks_greedy_action():
    net = random_net(2)
    obs = observations(10, seed=3)
    assert [make_policy(net, "float32")(o) for o in obs] == [greedy_action(net, o) for o in obs]


def test_the_int8_policy_keeps_its_own_copy_of_the_weights():
    net = random_net(3)
    obs = observations(1)[0]
    policy = Int8Policy(net)
    before = policy(obs)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    assert policy(obs) == before and policy.fc1_weight.abs().sum() > 0


def test_precision_choice():
    net = random_net(4)
    assert choose_precision(net, "float32", SHAPE) == ("float32", "as configured")
    assert choose_precision(net, "int8", SHAPE) == ("int8", "as configured")
    chosen, why = choose_precision(net, "auto", SHAPE)
    assert chosen in ("int8", "float32") and "ms in int8" in why and "ms in float32" in why


def test_without_the_int8_kernels_auto_and_int8_fall_back_to_float32(monkeypatch):
    def missing(self, frames):
        raise RuntimeError("could not run 'aten::_weight_int8pack_mm' with arguments from the 'CPU' backend\nmore")
    monkeypatch.setattr(Int8Policy, "head", missing)
    for requested in ("auto", "int8"):
        chosen, why = choose_precision(random_net(5), requested, SHAPE)
        assert chosen == "float32"
        assert why == "int8 is not available in this PyTorch build (could not run 'aten::_weight_int8pack_mm' " \
                      "with arguments from the 'CPU' backend)"


def test_a_bad_acting_precision_is_refused():
    with pytest.raises(ConfigError, match="acting_precision must be auto, float32 or int8, got 'fp8'"):
        Config(acting_precision="fp8")
