"""Learner math (n-step TD targets, dueling head, weighted Huber loss, priorities, hard and soft target
updates, schedules) and checkpoints."""

import os

import numpy as np
import pytest
import torch

from common.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CheckpointError, load_checkpoint, save_checkpoint
from common.config import Config
from common.network import QNetwork, build_network, load_arrays, network_from_arrays, weights_to_arrays
from learner.learning import DQNLearner, linear_decay, td_targets

CPU = torch.device("cpu")
S = 4  # config.frame_stack
GAMMA = 0.9


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: on a small, shared machine OpenMP threads that wait for a busy core make each
    update ~30x slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_config(**changes) -> Config:
    base = dict(
        batch_size=4,
        replay_capacity=64,
        learning_starts=0,
        target_update_every=1000,
        lr=1e-3,
        lr_decay_updates=1000,
        gamma=GAMMA,
        n_step=3,
        device="cpu",
    )
    return Config(**{**base, **changes})


def make_learner(seed: int = 0, **changes) -> DQNLearner:
    torch.manual_seed(seed)
    return DQNLearner(make_config(**changes), CPU, check_mixed_precision=False)  # bfloat16 even where slow


def make_batch(seed: int = 0, size: int = 84, stack: int = S) -> dict:
    """4 n-step transitions (n=3, gamma=0.9): frames (4, 2 * stack, size, size), obs then next obs; bootstraps
    for a full window (0.9^3), a terminal step (0), a truncation 2 steps on (0.9^2) and 1 step on (0.9);
    returns big and small (both Huber branches)."""
    rng = np.random.default_rng(seed)
    return dict(
        frames=rng.integers(0, 256, (4, 2 * stack, size, size), dtype=np.uint8),
        actions=np.array([0, 3, 6, 2], np.uint8),
        rewards=np.array([3.0, -2.5, 0.1, 0.0], np.float32),
        bootstraps=np.array([0.729, 0.0, 0.81, 0.9], np.float32),
        weights=np.array([1.0, 0.5, 0.25, 0.8], np.float32),
    )


def reference(learner: DQNLearner, batch: dict) -> tuple[np.ndarray, np.ndarray]:
    """(y, q) computed independently from the networks, before the update: obs = frames[:, :S],
    next obs = frames[:, S:], y = R + bootstrap * Q_target(s', a')."""
    frames = torch.from_numpy(batch["frames"])
    s = learner.config.frame_stack
    rows = np.arange(len(batch["actions"]))
    with torch.no_grad():
        q = learner.online(frames[:, :s]).numpy()[rows, batch["actions"]]
        next_target = learner.target(frames[:, s:]).numpy()
        next_online = learner.online(frames[:, s:]).numpy()
    chooser = next_online if learner.config.double_dqn else next_target
    next_value = next_target[rows, chooser.argmax(axis=1)]
    y = batch["rewards"].astype(np.float64) + batch["bootstraps"].astype(np.float64) * next_value
    return y, q.astype(np.float64)


def huber(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 1.0, 0.5 * x * x, np.abs(x) - 0.5)


def params(net: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-6, atol=1e-7) for k in a)


def detune_target(learner: DQNLearner, seed: int = 5) -> None:
    """Give the target network other weights than the online one (same architecture)."""
    torch.manual_seed(seed)
    learner.target.load_state_dict(build_network(learner.config).state_dict())
    assert not same(params(learner.target), params(learner.online))


# --- td_targets ----------------------------------------------------------------------------------------

# Four n-step transitions, n = 3, gamma = 0.9. R is the discounted return the actor computed:
#   0: full window, rewards (1, 0, 2)               R = 1 + 0.9*0 + 0.81*2 = 2.62, bootstrap 0.9^3 = 0.729
#   1: truncated 2 steps on, rewards (0.5, 1)      R = 0.5 + 0.9*1 = 1.4,        bootstrap 0.9^2 = 0.81
#   2: terminal 2 steps on, rewards (-1, 2)        R = -1 + 0.9*2 = 0.8,         bootstrap 0
#   3: truncated 1 step on, reward 2               R = 2,                        bootstrap 0.9
RETURNS = torch.tensor([2.62, 1.4, 0.8, 2.0])
BOOTSTRAPS = torch.tensor([0.9**3, 0.9**2, 0.0, 0.9])
NEXT_TARGET = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 5.0], [7.0, 8.0, 9.0], [4.0, 0.0, 1.0]])
NEXT_ONLINE = torch.tensor([[5.0, 0.0, 1.0], [0.0, 9.0, 1.0], [1.0, 2.0, 3.0], [0.0, 1.0, 2.0]])
# plain: argmax Q_target = [1, 2, 2, 0], values [3, 5, 9, 4]
# double: argmax Q_online = [0, 1, 2, 2], Q_target there = [1, -1, 9, 1] (differs from plain in rows 0, 1, 3)
PLAIN = [2.62 + 0.729 * 3, 1.4 + 0.81 * 5, 0.8, 2.0 + 0.9 * 4]  # [4.807, 5.45, 0.8, 5.6]
DOUBLE = [2.62 + 0.729 * 1, 1.4 - 0.81 * 1, 0.8, 2.0 + 0.9 * 1]  # [3.349, 0.59, 0.8, 2.9]


def test_n_step_fixture_numbers():
    """The hand-computed returns and bootstraps above are what n=3, gamma=0.9 gives."""
    for r, rewards in zip(RETURNS.tolist(), [(1, 0, 2), (0.5, 1), (-1, 2), (2,)]):
        assert r == pytest.approx(sum(GAMMA**i * x for i, x in enumerate(rewards)))
    assert BOOTSTRAPS.tolist() == pytest.approx([0.729, 0.81, 0.0, 0.9])
    assert PLAIN == pytest.approx([4.807, 5.45, 0.8, 5.6])
    assert DOUBLE == pytest.approx([3.349, 0.59, 0.8, 2.9])


@pytest.mark.parametrize("online,expected", [(None, PLAIN), (NEXT_ONLINE, DOUBLE)], ids=["plain", "double"])
def test_td_targets_n_step_hand_computed(online, expected):
    """y = R + bootstrap * Q_target(s', a'); the terminal transition (row 2) gets y = R although its
    next-state values are the largest."""
    y = td_targets(RETURNS, BOOTSTRAPS, NEXT_TARGET, online)
    assert y.shape == (4,)
    assert torch.allclose(y, torch.tensor(expected), atol=1e-6), y


def test_td_targets_plain_and_double_differ():
    plain = td_targets(RETURNS, BOOTSTRAPS, NEXT_TARGET, None)
    double = td_targets(RETURNS, BOOTSTRAPS, NEXT_TARGET, NEXT_ONLINE)
    assert not torch.allclose(plain, double)
    assert plain[2] == double[2] == RETURNS[2]


def test_td_targets_double_values_with_the_target_network():
    """Double DQN picks a' with the online net but takes its value from the target net, never the online."""
    y = td_targets(torch.zeros(1), torch.ones(1), torch.tensor([[10.0, -3.0]]), torch.tensor([[0.0, 100.0]]))
    assert y.tolist() == [-3.0]


def test_td_targets_with_zero_bootstraps_are_the_returns():
    y = td_targets(RETURNS, torch.zeros(4), NEXT_TARGET, NEXT_ONLINE)
    assert torch.equal(y, RETURNS)


@pytest.mark.parametrize(
    "online,expected",
    [
        # one-step DQN as the special case n=1: bootstrap = gamma * (1 - done); max Q_target = [3, 5, 9, 4]
        (None, [1 + 0.9 * 3, 0.5 + 0.9 * 5, -1.0, 2 + 0.9 * 4]),
        # a' = argmax Q_online = [0, 1, 2, 2]; Q_target(s', a') = [1, -1, 9, 1]
        (NEXT_ONLINE, [1 + 0.9 * 1, 0.5 - 0.9 * 1, -1.0, 2 + 0.9 * 1]),
    ],
)
def test_td_targets_one_step_special_case(online, expected):
    rewards, dones = torch.tensor([1.0, 0.5, -1.0, 2.0]), torch.tensor([0.0, 0.0, 1.0, 0.0])
    y = td_targets(rewards, GAMMA * (1.0 - dones), NEXT_TARGET, online)
    assert torch.allclose(y, torch.tensor(expected), atol=1e-6), y


# --- dueling head --------------------------------------------------------------------------------------


def frames_for(size: int = 36, batch: int = 3, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (batch, S, size, size), dtype=np.uint8))


def parts(net: QNetwork, frames: torch.Tensor):
    """(A or Q from `head`, V from `value` or None), computed from the submodules."""
    features = net.features(frames.float() / 255.0)
    return net.head(features), (net.value(features) if net.value is not None else None)


def test_dueling_forward_is_v_plus_a_minus_mean_a():
    torch.manual_seed(0)
    net = QNetwork(S, 36, 7, dueling=True)
    x = frames_for()
    with torch.no_grad():
        q = net(x)
        a, v = parts(net, x)
    assert q.shape == (3, 7) and a.shape == (3, 7) and v.shape == (3, 1)
    assert torch.allclose(q, v + a - a.mean(dim=1, keepdim=True), atol=1e-6)
    assert not torch.allclose(q, a, atol=1e-3) and not torch.allclose(q, v + a, atol=1e-3)
    assert torch.allclose((q - v).mean(dim=1), torch.zeros(3), atol=1e-6), "advantages are centred"
    assert torch.equal(q.argmax(dim=1), a.argmax(dim=1)), "the greedy action is the best advantage"


@pytest.mark.parametrize("dueling", [True, False])
def test_greedy_is_the_argmax_of_q_without_the_value_stream(dueling, monkeypatch):
    """The actor's fast path: net.greedy gives argmax Q on many inputs, and never runs the value stream."""
    torch.manual_seed(1)
    net = QNetwork(S, 36, 7, dueling=dueling).eval()
    with torch.no_grad():  # an untrained net picks one action everywhere
        for layer in (net.head[2], *((net.value[2],) if dueling else ())):
            layer.weight.normal_(0.0, 1.0)
    density = torch.rand(200, 1, 1, 1) ** 3  # from nearly black to nearly white frames
    x = ((torch.rand(200, S, 36, 36) < density) * 255).to(torch.uint8)
    with torch.no_grad():
        expected = net(x).argmax(dim=1)
        if dueling:
            monkeypatch.setattr(net, "value", None)  # greedy must not need it
        greedy = net.greedy(x)
    assert greedy.shape == (200,) and torch.equal(greedy, expected)
    assert len(set(expected.tolist())) > 1, "the inputs must not all pick one action"


def test_dueling_forward_hand_computed():
    """Output layers with zero weights: A = bias [1..7] (mean 4), V = 10, so Q = 10 + A - 4 = [7..13]."""
    torch.manual_seed(0)
    net = QNetwork(S, 36, 7, dueling=True)
    with torch.no_grad():
        for layer, bias in ((net.head[-1], torch.arange(1.0, 8.0)), (net.value[-1], torch.tensor([10.0]))):
            layer.weight.zero_()
            layer.bias.copy_(bias)
        q = net(frames_for(batch=2))
    assert torch.allclose(q, torch.arange(7.0, 14.0).expand(2, 7))


def test_dueling_is_identifiable_and_a_value_shift_shifts_q():
    """A constant added to every advantage leaves Q unchanged; a constant added to V shifts every Q by it."""
    torch.manual_seed(0)
    net = QNetwork(S, 36, 7, dueling=True)
    x = frames_for()
    with torch.no_grad():
        q = net(x)
        a, _ = parts(net, x)
        net.head[-1].bias += 5.0
        a_shifted, _ = parts(net, x)
        assert torch.allclose(a_shifted, a + 5.0, atol=1e-5)
        assert torch.allclose(net(x), q, atol=1e-5)
        net.value[-1].bias += 2.0
        assert torch.allclose(net(x), q + 2.0, atol=1e-5)


def test_plain_network_has_no_value_head_and_q_is_the_head_output():
    torch.manual_seed(0)
    net = QNetwork(S, 36, 7)
    assert net.value is None
    assert not any(name.startswith("value.") for name in net.state_dict())
    x = frames_for()
    with torch.no_grad():
        q = net(x)
        assert torch.equal(q, parts(net, x)[0])
        net.head[-1].bias += 5.0  # without a dueling head, Q does follow the head's bias
        assert torch.allclose(net(x), q + 5.0, atol=1e-5)


@pytest.mark.parametrize("dueling", [True, False])
def test_build_network_follows_config_dueling(dueling):
    net = build_network(make_config(frame_size=36, dueling=dueling))
    assert (net.value is not None) == dueling
    assert any(name.startswith("value.") for name in net.state_dict()) == dueling
    learner = make_learner(frame_size=36, dueling=dueling)
    assert (learner.online.value is not None) == dueling and (learner.target.value is not None) == dueling


def test_network_from_arrays_is_the_sent_network_and_refuses_what_does_not_fit():
    """How an actor takes new weights: a new network (built without random init) equal to the sender's,
    sharing no memory with the arrays; wrong names, shapes or dtypes give ValueError."""
    config = make_config(frame_size=36, dueling=True)
    sender = build_network(config)
    arrays = weights_to_arrays(sender)
    net = network_from_arrays(config, arrays)
    x = torch.randint(0, 256, (5, config.frame_stack, 36, 36), dtype=torch.uint8)
    assert not net.training and all(p.device.type == "cpu" for p in net.parameters())
    with torch.no_grad():
        assert torch.equal(net(x), sender(x))
    arrays["head.0.bias"][:] = 7.0  # the message's memory is not the network's
    assert not torch.equal(net.head[0].bias, torch.full_like(net.head[0].bias, 7.0))
    bad = [
        {k: v for k, v in arrays.items() if k != "head.0.bias"},
        {**arrays, "head.0.bias": np.zeros(3, np.float32)},
        {**arrays, "head.0.bias": arrays["head.0.bias"].astype(np.float64)},
    ]
    for arrays_ in bad:
        with pytest.raises(ValueError):
            network_from_arrays(config, arrays_)
        with pytest.raises(ValueError):
            load_arrays(build_network(config), arrays_)


def test_config_defaults_n_step_dueling_hard_targets():
    c = Config()
    assert (c.n_step, c.dueling, c.target_tau) == (3, True, 0.0)


# --- schedules -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("step,expected", [(0, 1.0), (25, 0.775), (50, 0.55), (100, 0.1), (101, 0.1), (10**6, 0.1)])
def test_linear_decay(step, expected):
    """The LR factor falls linearly from 1 to end_factor over `updates`, then holds."""
    assert linear_decay(0.1, 100)(step) == pytest.approx(expected)


@pytest.mark.parametrize("updates,expected", [(0, 0.4), (5, 0.7), (10, 1.0), (11, 1.0), (1000, 1.0)])
def test_beta_anneals_to_one(updates, expected):
    learner = make_learner(per_beta_start=0.4, per_beta_updates=10, frame_size=36)
    learner.updates = updates
    assert learner.beta() == pytest.approx(expected)


# --- one update ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dueling", [True, False], ids=["dueling", "plain-head"])
@pytest.mark.parametrize("double_dqn", [True, False], ids=["double", "single"])
def test_step_priorities_and_weighted_huber_loss(double_dqn, dueling):
    """step() returns |y - q| + per_eps for priorities, and its loss is mean(w * Huber(y - q)),
    with y = R + bootstrap * Q_target(next obs = frames[:, S:], a') and q computed independently before
    the update (double or plain DQN, dueling or not)."""
    learner = make_learner(double_dqn=double_dqn, dueling=dueling, per_eps=1e-3)
    assert (learner.online.value is not None) == dueling
    detune_target(learner)
    batch = make_batch()
    y, q = reference(learner, batch)

    # The setup tells double from plain DQN, and exercises both Huber branches.
    learner.config.double_dqn = not double_dqn
    y_other, _ = reference(learner, batch)
    learner.config.double_dqn = double_dqn
    assert not np.allclose(y, y_other)
    assert (np.abs(y - q) > 1).any() and (np.abs(y - q) < 1).any()

    metrics, priorities = learner.step(**batch)
    assert priorities.shape == (4,)
    np.testing.assert_allclose(priorities, np.abs(y - q) + 1e-3, rtol=1e-5, atol=1e-6)
    assert metrics["loss"] == pytest.approx(np.mean(batch["weights"] * huber(y - q)), rel=1e-5)
    assert learner.updates == 1
    assert set(metrics) >= {"loss", "q_mean", "grad_norm", "lr"}


def test_step_reads_next_obs_from_the_second_half_of_the_frames():
    """Only frames[:, S:] are the next obs: changing them changes bootstrapped targets only, and a
    transition with bootstrap 0 (row 1) keeps its priority. Changing frames[:, :S] changes every q."""
    batch = make_batch(size=36)
    base = make_learner(frame_size=36, double_dqn=False)
    detune_target(base)
    state = base.state_dict()

    def priorities_for(frames):
        learner = make_learner(frame_size=36, double_dqn=False)
        learner.online.load_state_dict(state["online"])
        learner.target.load_state_dict(state["target"])
        return learner.step(**{**batch, "frames": frames})[1]

    p = priorities_for(batch["frames"])
    other = np.random.default_rng(9).integers(0, 256, batch["frames"].shape, dtype=np.uint8)
    new_next = np.concatenate([batch["frames"][:, :S], other[:, S:]], axis=1)
    p_next = priorities_for(new_next)
    assert p_next[1] == p[1], "bootstrap 0: the next obs does not matter"
    assert (p_next[[0, 2, 3]] != p[[0, 2, 3]]).all()
    new_obs = np.concatenate([other[:, :S], batch["frames"][:, S:]], axis=1)
    assert (priorities_for(new_obs) != p).all()


def test_step_does_not_discount_again_with_gamma():
    """The bootstraps already carry gamma^k: the learner's gamma plays no part in an update."""
    batch = make_batch(size=36)
    results = []
    for gamma in (0.9, 0.5):
        learner = make_learner(frame_size=36, gamma=gamma)
        detune_target(learner)
        metrics, priorities = learner.step(**batch)
        results.append((metrics["loss"], priorities, params(learner.online)))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert same(results[0][2], results[1][2])


def test_zero_importance_weights_leave_the_network_unchanged():
    """The loss is weighted per sample: with all weights 0 the gradient is 0 and no parameter moves."""
    learner = make_learner()
    before = params(learner.online)
    batch = make_batch()
    batch["weights"] = np.zeros(4, np.float32)
    metrics, priorities = learner.step(**batch)
    assert metrics["loss"] == 0.0 and metrics["grad_norm"] == 0.0
    assert same(before, params(learner.online))
    assert (priorities > 1e-6).all(), "priorities still measure the TD error"


@pytest.mark.parametrize("dueling", [True, False], ids=["dueling", "plain-head"])
def test_repeated_steps_on_one_batch_reduce_the_loss(dueling):
    learner = make_learner(lr=5e-4, dueling=dueling)
    batch = make_batch()
    losses = [learner.step(**batch)[0]["loss"] for _ in range(25)]
    assert losses[-1] < 0.25 * losses[0], losses


def test_mixed_precision_step_matches_full_precision_closely_and_learns():
    """mixed_precision runs the forward passes in bfloat16 here (float16 with loss scaling on CUDA):
    priorities and loss stay close to the float32 ones, and repeated steps still learn."""
    batch = make_batch()
    full, mixed = make_learner(per_eps=1e-3), make_learner(per_eps=1e-3, mixed_precision=True)
    mixed.online.load_state_dict(full.online.state_dict())
    mixed.target.load_state_dict(full.target.state_dict())
    full_metrics, full_priorities = full.step(**batch)
    mixed_metrics, mixed_priorities = mixed.step(**batch)
    assert mixed_priorities.dtype == np.float64 and np.isfinite(mixed_priorities).all()
    np.testing.assert_allclose(mixed_priorities, full_priorities, rtol=0.1, atol=0.02)
    assert not np.array_equal(mixed_priorities, full_priorities), "the forward passes did run in bfloat16"
    assert mixed_metrics["loss"] == pytest.approx(full_metrics["loss"], rel=0.1)
    assert not mixed.scaler.is_enabled(), "loss scaling is for CUDA float16 only"
    losses = [mixed.step(**batch)[0]["loss"] for _ in range(25)]
    assert losses[-1] < 0.25 * losses[0], losses


@pytest.mark.parametrize("bfloat16_ms, trains_in", [(500.0, "float32"), (20.0, "bfloat16")])
def test_mixed_precision_on_a_cpu_trains_in_bfloat16_only_where_it_is_faster(monkeypatch, bfloat16_ms, trains_in):
    """A CPU without native bfloat16 ran the update 10x slower with mixed_precision than without: the
    learner times both and keeps the faster, in one line."""
    import learner.learning as learning

    timed = []

    def forward_backward_ms(net, config, bfloat16):
        timed.append(bfloat16)
        return bfloat16_ms if bfloat16 else 50.0

    monkeypatch.setattr(learning, "forward_backward_ms", forward_backward_ms)
    logs = []
    learner = DQNLearner(make_config(mixed_precision=True), CPU, log=logs.append)
    assert sorted(timed) == [False, True]
    assert learner.mixed_precision == (trains_in == "bfloat16")
    assert logs == [
        f"mixed_precision: a batch's forward and backward takes {bfloat16_ms:.0f} ms in bfloat16, 50 ms in float32 "
        f"here{' (no native bfloat16 on this CPU?)' if trains_in == 'float32' else ''}; training in {trains_in}"
    ]
    full = make_learner()
    full.online.load_state_dict(learner.online.state_dict())
    full.target.load_state_dict(learner.target.state_dict())
    batch = make_batch()
    assert np.array_equal(learner.step(**batch)[1], full.step(**batch)[1]) == (trains_in == "float32")


def test_the_bfloat16_timing_leaves_the_network_as_it_was():
    from learner.learning import forward_backward_ms

    learner = make_learner()
    before = params(learner.online)
    assert forward_backward_ms(learner.online, learner.config, bfloat16=True, repeats=1) > 0
    assert same(before, params(learner.online))
    assert all(p.grad is None for p in learner.online.parameters())


# --- target network ------------------------------------------------------------------------------------


def test_target_network_syncs_exactly_every_n_updates():
    """With target_tau=0 and target_update_every=3 the target copies the online net after updates 3 and 6,
    and does not move at all in between."""
    learner = make_learner(target_update_every=3, target_tau=0.0)
    batch = make_batch(size=84)
    synced = params(learner.target)
    for update in range(1, 8):
        learner.step(**batch)
        online, target = params(learner.online), params(learner.target)
        if update % 3 == 0:
            assert same(target, online), f"target not synced at update {update}"
            synced = target
        else:
            assert same(target, synced), f"target changed at update {update}"
            assert not same(target, online)


@pytest.mark.parametrize("dueling", [True, False], ids=["dueling", "plain-head"])
def test_soft_target_update_is_polyak_averaging(dueling):
    """target_tau=0.25: after every update each target parameter is 0.75 * old target + 0.25 * the online
    parameter after that update; no hard copy, even when target_update_every says so."""
    learner = make_learner(frame_size=36, target_tau=0.25, target_update_every=1, dueling=dueling)
    detune_target(learner)
    batch = make_batch(size=36)
    for update in range(1, 3):
        old_target, old_online = params(learner.target), params(learner.online)
        learner.step(**batch)
        new_online, new_target = params(learner.online), params(learner.target)
        assert not same(new_online, old_online), "the online net moved"
        expected = {k: 0.75 * old_target[k] + 0.25 * new_online[k] for k in old_target}
        assert close(new_target, expected), f"update {update}"
        # ... and not the average with the online weights from before the update, nor a hard copy
        assert not close(new_target, {k: 0.75 * old_target[k] + 0.25 * old_online[k] for k in old_target})
        assert not close(new_target, new_online) and not close(new_target, old_target)
        assert not any(v.requires_grad for v in learner.target.parameters())


def test_soft_target_update_with_tau_one_copies_the_online_net():
    learner = make_learner(frame_size=36, target_tau=1.0)
    detune_target(learner)
    learner.step(**make_batch(size=36))
    assert close(params(learner.target), params(learner.online))


def test_learning_rate_follows_the_schedule():
    learner = make_learner(frame_size=36, lr=1e-3, lr_end_factor=0.5, lr_decay_updates=4)
    batch = make_batch(size=36)
    lrs = [learner.step(**batch)[0]["lr"] for _ in range(6)]
    assert lrs == pytest.approx([8.75e-4, 7.5e-4, 6.25e-4, 5e-4, 5e-4, 5e-4])


# --- checkpoints --------------------------------------------------------------------------------------

SMALL = dict(frame_size=36)  # the same Nature CNN, on 36x36 frames: small files, fast tests


@pytest.mark.parametrize(
    "changes", [{}, {"dueling": False}, {"target_tau": 0.25}], ids=["dueling", "plain-head", "soft"]
)
def test_save_restore_round_trip(tmp_path, changes):
    """A fresh learner restored from a checkpoint has identical weights, optimizer, learning rate and counter,
    and its next update is identical to the original's."""
    path = str(tmp_path / "checkpoint.pth")
    a = make_learner(seed=0, **SMALL, **changes)
    batch = make_batch(size=36)
    for _ in range(2):
        a.step(**batch)
    a.save(path, counters={"episodes": 5, "env_steps": 1234})
    assert os.listdir(tmp_path) == ["checkpoint.pth"], "no temporary file left behind"

    b = make_learner(seed=1, **SMALL, **changes)
    assert not same(params(a.online), params(b.online))
    assert b.restore(path) == {"updates": 2, "episodes": 5, "env_steps": 1234}
    assert b.updates == 2
    assert same(params(a.online), params(b.online)) and same(params(a.target), params(b.target))
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        assert same(sa["state"][k], sb["state"][k])
    assert a.optimizer.lr == b.optimizer.lr < a.config.lr, "the schedule goes on from the restored updates"

    ma, pa = a.step(**batch)
    mb, pb = b.step(**batch)
    np.testing.assert_array_equal(pa, pb)
    assert ma == mb and same(params(a.online), params(b.online))


def test_checkpoint_is_a_plain_dict_with_format_and_version(tmp_path):
    path = str(tmp_path / "c.pth")
    make_learner(**SMALL).save(path)
    state = load_checkpoint(path)
    assert state["format"] == CHECKPOINT_FORMAT and state["version"] == CHECKPOINT_VERSION
    assert Config.from_dict(state["config"]) == make_config(**SMALL)


CALLS = []


def _record(what):
    CALLS.append(what)
    return what


class Payload:
    """An object whose unpickling runs code (here: harmlessly records a call)."""

    def __reduce__(self):
        return _record, ("code ran",)


def test_load_refuses_pickled_objects(tmp_path):
    """weights_only: a checkpoint holding an arbitrary object is refused, and its code never runs."""
    path = tmp_path / "evil.pth"
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "x": Payload()}, path)
    CALLS.clear()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(str(path))
    assert str(path) in str(info.value)
    assert CALLS == []
    torch.load(path, weights_only=False)  # the file really does carry a payload
    assert CALLS == ["code ran"]


def _write(data):
    def make(path):
        path.write_bytes(data)

    return make


def _torch_save(obj):
    def make(path):
        torch.save(obj, path)

    return make


def _truncated(path):
    save_checkpoint({"online": {"w": torch.arange(5000.0)}}, str(path))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


BAD_FILES = {
    "truncated": _truncated,
    "random bytes": _write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
    "empty": _write(b""),
    "missing": lambda path: None,
    "folder": lambda path: path.mkdir(),
    "wrong format": _torch_save({"format": "some-other-checkpoint", "version": CHECKPOINT_VERSION}),
    "no format": _torch_save({"version": CHECKPOINT_VERSION, "online": {}}),
    "wrong version": _torch_save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION + 1}),
    "no version": _torch_save({"format": CHECKPOINT_FORMAT}),
    "not a dict": _torch_save([1, 2, 3]),
    "a bare tensor": _torch_save(torch.zeros(3)),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_checkpoint_files_raise_checkpoint_error_naming_the_file(tmp_path, kind):
    path = tmp_path / "checkpoint.pth"
    BAD_FILES[kind](path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(str(path))
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError):
        make_learner(**SMALL).restore(str(path))


def test_restore_from_a_different_network_shape_fails(tmp_path):
    """A checkpoint of a 12-action network does not fit a 7-action learner."""
    path = str(tmp_path / "twelve.pth")
    make_learner(num_actions=12, **SMALL).save(path)
    with pytest.raises(CheckpointError) as info:
        make_learner(num_actions=7, **SMALL).restore(path)
    assert path in str(info.value)


@pytest.mark.parametrize(
    "saved,restoring", [(True, False), (False, True)], ids=["dueling-into-plain", "plain-into-dueling"]
)
def test_restore_across_dueling_and_plain_heads_fails(tmp_path, saved, restoring):
    """The dueling head has a `value` submodule the plain one lacks: the checkpoint does not fit either way."""
    path = str(tmp_path / "checkpoint.pth")
    make_learner(dueling=saved, **SMALL).save(path)
    learner = make_learner(dueling=restoring, **SMALL)
    with pytest.raises(CheckpointError) as info:
        learner.restore(path)
    assert path in str(info.value)
    assert learner.updates == 0
    assert make_learner(dueling=saved, **SMALL).restore(path) == {"updates": 0}, "it fits its own kind"


@pytest.mark.parametrize("section", ["online", "target", "optimizer", "counters"])
def test_restore_with_a_missing_section_fails(tmp_path, section):
    learner = make_learner(**SMALL)
    state = learner.state_dict()
    del state[section]
    path = str(tmp_path / "partial.pth")
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError) as info:
        make_learner(**SMALL).restore(path)
    assert path in str(info.value)


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    """If torch.save dies midway the previous checkpoint is intact and no temporary file remains."""
    path = tmp_path / "checkpoint.pth"
    save_checkpoint({"online": {"w": torch.ones(3)}}, str(path))
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint({"online": {"w": torch.zeros(3)}}, str(path))
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert torch.equal(load_checkpoint(str(path))["online"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["checkpoint.pth"]


def test_save_replaces_the_previous_checkpoint(tmp_path):
    path = str(tmp_path / "checkpoint.pth")
    save_checkpoint({"online": {"w": torch.ones(3)}}, path)
    save_checkpoint({"online": {"w": torch.full((3,), 2.0)}}, path)
    assert torch.equal(load_checkpoint(path)["online"]["w"], torch.full((3,), 2.0))
    assert os.listdir(tmp_path) == ["checkpoint.pth"]
