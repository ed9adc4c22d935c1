"""QR-DQN (config.quantiles): the network's quantiles, the target quantiles, the quantile Huber loss, the
learner's update and priorities, and the actors' greedy policies on a quantile network."""

import numpy as np
import pytest
import torch

from actor.acting_network import Int8Policy
from common.checkpoint import CheckpointError
from common.config import Config, ConfigError
from common.network import QNetwork, build_network
from learner.learning import quantile_huber_loss, quantile_targets
from tests.test_learning import SMALL, make_batch, make_learner

S = 4


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread, as in test_learning (a shared 2-core machine); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def frames(batch: int = 50, size: int = 36, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    density = torch.rand(batch, 1, 1, 1, generator=generator) ** 3  # nearly black to nearly white
    return ((torch.rand(batch, S, size, size, generator=generator) < density) * 255).to(torch.uint8)


@pytest.mark.parametrize("dueling", [True, False])
def test_quantile_network_q_is_the_mean_of_its_quantiles(dueling):
    torch.manual_seed(0)
    net = QNetwork(S, 36, 5, dueling=dueling, quantiles=8).eval()
    x = frames(batch=3)
    with torch.no_grad():
        z = net.quantiles_of(x)
        q = net(x)
    assert z.shape == (3, 5, 8) and q.shape == (3, 5)
    assert torch.allclose(q, z.mean(dim=2), atol=1e-6)
    assert net.head[-1].out_features == 40 and (not dueling or net.value[-1].out_features == 8)


def test_dueling_quantiles_add_the_value_quantile_to_each_centred_advantage_quantile():
    """Zero weights: advantage quantiles = bias (action a, quantile k: 10a + k), value quantiles = 100k, so
    z[a, k] = 100k + 10a + k - mean_a(10a + k) = 100k + 10(a - 2)."""
    torch.manual_seed(0)
    net = QNetwork(S, 36, 5, dueling=True, quantiles=4)
    advantages = torch.tensor([[10.0 * a + k for k in range(4)] for a in range(5)]).flatten()
    with torch.no_grad():
        for layer, bias in ((net.head[-1], advantages), (net.value[-1], 100.0 * torch.arange(4.0))):
            layer.weight.zero_()
            layer.bias.copy_(bias)
        z = net.quantiles_of(frames(batch=2))
    expected = torch.tensor([[100.0 * k + 10.0 * (a - 2) for k in range(4)] for a in range(5)])
    assert torch.allclose(z, expected.expand(2, 5, 4))


def test_expected_value_network_is_unchanged_by_the_quantile_code():
    """quantiles=0 keeps DQN's layout (parameter names and shapes: old checkpoints load) and one value each."""
    torch.manual_seed(0)
    net = QNetwork(S, 36, 7, dueling=True)
    assert net.head[-1].out_features == 7 and net.value[-1].out_features == 1
    with torch.no_grad():
        assert net.quantiles_of(frames(batch=2)).shape == (2, 7, 1)


@pytest.mark.parametrize("dueling", [True, False])
def test_greedy_and_the_int8_policy_pick_the_best_mean_quantile(dueling):
    """Both fast paths (the float greedy without the value stream, the int8 policy) pick argmax of the mean
    quantile, which with these weights differs from the argmax of any single quantile column."""
    torch.manual_seed(1)
    net = QNetwork(S, 36, 5, dueling=dueling, quantiles=8).eval()
    with torch.no_grad():
        net.head[2].weight.normal_(0.0, 1.0)
        x = frames(batch=200)
        expected = net(x).argmax(dim=1)
        assert torch.equal(net.greedy(x), expected)
        first_quantile = net.quantiles_of(x)[:, :, 0].argmax(dim=1)
    assert len(set(expected.tolist())) > 1, "the inputs must not all pick one action"
    assert not torch.equal(first_quantile, expected), "a single quantile must not decide"
    int8 = Int8Policy(net)(x.numpy())
    assert (int8 == expected.numpy()).mean() >= 0.95  # int8 may differ only on near ties


def test_quantile_targets_hand_computed():
    """Double: a' by the online quantiles' mean, valued with the target's quantiles; plain: both target."""
    rewards, bootstraps = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.0])
    target = torch.tensor([[[0.0, 2.0], [10.0, 20.0]], [[3.0, 5.0], [7.0, 9.0]]])  # (B 2, actions 2, N 2)
    online = torch.tensor([[[5.0, 5.0], [1.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]]])
    double = quantile_targets(rewards, bootstraps, target, online)
    assert torch.allclose(double, torch.tensor([[1.0 + 0.5 * 0.0, 1.0 + 0.5 * 2.0], [2.0, 2.0]]))
    plain = quantile_targets(rewards, bootstraps, target, None)
    assert torch.allclose(plain, torch.tensor([[1.0 + 0.5 * 10.0, 1.0 + 0.5 * 20.0], [2.0, 2.0]]))


def test_quantile_huber_loss_hand_computed():
    """N = 2 (tau 1/4, 3/4), z = [0, 0], targets [0.5, -3]: u = [[0.5, -3], [0.5, -3]], Huber [0.125, 2.5];
    quantile 1: (1/4 * 0.125 + 3/4 * 2.5) / 2, quantile 2: (3/4 * 0.125 + 1/4 * 2.5) / 2."""
    loss = quantile_huber_loss(torch.zeros(1, 2), torch.tensor([[0.5, -3.0]]))
    expected = (0.25 * 0.125 + 0.75 * 2.5) / 2 + (0.75 * 0.125 + 0.25 * 2.5) / 2
    assert loss.shape == (1,) and loss.item() == pytest.approx(expected)
    one = quantile_huber_loss(torch.tensor([[1.0]]), torch.tensor([[4.0]]))  # N = 1: half the Huber loss
    assert one.item() == pytest.approx(0.5 * 2.5)


def test_minimising_the_quantile_loss_finds_the_quantiles_in_order():
    """Fitted to the four targets 0, 10, 20, 30, quantiles 1/8, 3/8, 5/8, 7/8 land near them, in order
    (reversed taus would sort them the other way; the Huber zone moves each less than 1 from its target)."""
    z = torch.full((1, 4), 15.0, requires_grad=True)
    target = torch.tensor([[0.0, 10.0, 20.0, 30.0]])
    optimizer = torch.optim.SGD([z], lr=2.0)
    for _ in range(600):
        optimizer.zero_grad()
        quantile_huber_loss(z, target).sum().backward()
        optimizer.step()
    assert torch.allclose(z.detach(), target, atol=1.0), z
    assert (z.detach().diff() > 0).all()


@pytest.mark.parametrize("double_dqn", [True, False])
def test_quantile_step_learns_and_prioritises_by_each_transition_loss(double_dqn):
    learner = make_learner(lr=5e-4, quantiles=8, double_dqn=double_dqn)
    batch = make_batch()
    metrics, priorities = learner.step(**batch)
    assert priorities.shape == (4,) and np.isfinite(priorities).all() and (priorities > 0).all()
    losses = [metrics["loss"]] + [learner.step(**batch)[0]["loss"] for _ in range(30)]
    assert losses[-1] < 0.25 * losses[0], losses
    # the loss is the importance-weighted mean of each transition's loss, which is its new priority (+ per_eps)
    metrics, priorities = learner.step(**batch)
    own = priorities - learner.config.per_eps
    assert metrics["loss"] == pytest.approx(float(np.mean(batch["weights"] * own)), rel=1e-4)


def test_terminal_transitions_target_the_reward_at_every_quantile():
    """A zero bootstrap makes every target quantile the n-step return, whatever the next state holds."""
    learner = make_learner(lr=2e-3, quantiles=4)
    batch = make_batch()
    batch["bootstraps"] = np.zeros(4, np.float32)
    for _ in range(300):
        learner.step(**batch)
    obs = torch.from_numpy(batch["frames"][:, :S])
    with torch.no_grad():
        z = learner.online.quantiles_of(obs)[torch.arange(4), torch.from_numpy(batch["actions"].astype(np.int64))]
    assert torch.allclose(z, torch.from_numpy(batch["rewards"]).unsqueeze(1).expand(4, 4), atol=0.15), z


def test_quantiles_follow_the_config_and_are_checked():
    assert build_network(Config(quantiles=16)).head[-1].out_features == 7 * 16
    assert Config().quantiles == 0
    for bad in (-1, 257):
        with pytest.raises(ConfigError, match="quantiles"):
            Config(quantiles=bad)


def test_a_checkpoint_does_not_restore_across_quantile_counts(tmp_path):
    path = str(tmp_path / "checkpoint.pth")
    make_learner(quantiles=8, **SMALL).save(path)
    for other in (0, 4):
        with pytest.raises(CheckpointError) as info:
            make_learner(quantiles=other, **SMALL).restore(path)
        assert path in str(info.value)
    assert make_learner(quantiles=8, **SMALL).restore(path) == {"updates": 0}
