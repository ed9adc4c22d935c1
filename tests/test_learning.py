"""Learner math (TD targets, weighted Huber loss, priorities, target sync, schedules) and checkpoints."""
import os

import numpy as np
import pytest
import torch

from common.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CheckpointError, load_checkpoint, save_checkpoint
from common.config import Config
from learner.learning import DQNLearner, linear_decay, td_targets

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: on a small, shared machine OpenMP threads that wait for a busy core make each
    update ~30x slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_config(**changes) -> Config:
    base = dict(batch_size=4, replay_capacity=64, learning_starts=0, target_update_every=1000, lr=1e-3,
                lr_decay_updates=1000, gamma=0.9, device="cpu")
    return Config(**{**base, **changes})


def make_learner(seed: int = 0, **changes) -> DQNLearner:
    torch.manual_seed(seed)
    return DQNLearner(make_config(**changes), CPU)


def make_batch(seed: int = 0, size: int = 84, stack: int = 4) -> dict:
    """4 transitions: frames (4, stack + 1, size, size); one done; rewards big and small (both Huber branches)."""
    rng = np.random.default_rng(seed)
    return dict(frames=rng.integers(0, 256, (4, stack + 1, size, size), dtype=np.uint8),
                actions=np.array([0, 3, 6, 2], np.uint8),
                rewards=np.array([3.0, -2.5, 0.1, 0.0], np.float32),
                dones=np.array([False, True, False, False]),
                weights=np.array([1.0, 0.5, 0.25, 0.8], np.float32))


def reference(learner: DQNLearner, batch: dict) -> tuple[np.ndarray, np.ndarray]:
    """(y, q) computed independently from the networks, before the update."""
    frames = torch.from_numpy(batch["frames"])
    s = learner.config.frame_stack
    rows = np.arange(len(batch["actions"]))
    with torch.no_grad():
        q = learner.online(frames[:, :s]).numpy()[rows, batch["actions"]]
        next_target = learner.target(frames[:, 1:]).numpy()
        next_online = learner.online(frames[:, 1:]).numpy()
    chooser = next_online if learner.config.double_dqn else next_target
    next_value = next_target[rows, chooser.argmax(axis=1)]
    y = batch["rewards"] + learner.config.gamma * (1.0 - batch["dones"]) * next_value
    return y.astype(np.float64), q.astype(np.float64)


def huber(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 1.0, 0.5 * x * x, np.abs(x) - 0.5)


def params(net: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- td_targets ----------------------------------------------------------------------------------------

REWARDS = torch.tensor([1.0, 0.5, -1.0, 2.0])
DONES = torch.tensor([False, False, True, False])
NEXT_TARGET = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 5.0], [7.0, 8.0, 9.0], [4.0, 4.0, 1.0]])
NEXT_ONLINE = torch.tensor([[5.0, 0.0, 1.0], [0.0, 9.0, 1.0], [1.0, 2.0, 3.0], [0.0, 1.0, 2.0]])


@pytest.mark.parametrize("online,gamma,expected", [
    # plain DQN: r + gamma * max_a Q_target(s', a); max = [3, 5, 9, 4]
    (None, 0.9, [1 + 0.9 * 3, 0.5 + 0.9 * 5, -1.0, 2 + 0.9 * 4]),
    (None, 1.0, [4.0, 5.5, -1.0, 6.0]),
    # double DQN: a' = argmax Q_online = [0, 1, 2, 2]; Q_target(s', a') = [1, -1, 9, 1]
    (NEXT_ONLINE, 0.9, [1 + 0.9 * 1, 0.5 - 0.9 * 1, -1.0, 2 + 0.9 * 1]),
    (NEXT_ONLINE, 0.5, [1.5, 0.0, -1.0, 2.5]),
])
def test_td_targets_hand_computed(online, gamma, expected):
    """Done transitions (the third) get no bootstrap: y = r."""
    y = td_targets(REWARDS, DONES, NEXT_TARGET, online, gamma)
    assert y.shape == (4,)
    assert torch.allclose(y, torch.tensor(expected), atol=1e-6), y


def test_td_targets_accept_float_dones():
    y = td_targets(REWARDS, DONES.float(), NEXT_TARGET, None, 0.9)
    assert torch.allclose(y, torch.tensor([3.7, 5.0, -1.0, 5.6]), atol=1e-6)


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

@pytest.mark.parametrize("double_dqn", [True, False])
def test_step_priorities_and_weighted_huber_loss(double_dqn):
    """step() returns |y - q| + per_eps for priorities, and its loss is mean(w * Huber(y - q)),
    with y and q computed independently before the update (double or plain DQN)."""
    learner = make_learner(double_dqn=double_dqn, per_eps=1e-3)
    torch.manual_seed(1)
    learner.target.load_state_dict(make_learner(seed=5).online.state_dict())   # target != online
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


def test_repeated_steps_on_one_batch_reduce_the_loss():
    learner = make_learner(lr=5e-4)
    batch = make_batch()
    losses = [learner.step(**batch)[0]["loss"] for _ in range(25)]
    assert losses[-1] < 0.25 * losses[0], losses


def test_target_network_syncs_exactly_every_n_updates():
    """With target_update_every=3 the target copies the online net after updates 3 and 6, never between."""
    learner = make_learner(target_update_every=3)
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


def test_learning_rate_follows_the_schedule():
    learner = make_learner(frame_size=36, lr=1e-3, lr_end_factor=0.5, lr_decay_updates=4)
    batch = make_batch(size=36)
    lrs = [learner.step(**batch)[0]["lr"] for _ in range(6)]
    assert lrs == pytest.approx([8.75e-4, 7.5e-4, 6.25e-4, 5e-4, 5e-4, 5e-4])


# --- checkpoints --------------------------------------------------------------------------------------

SMALL = dict(frame_size=36)     # the same Nature CNN, on 36x36 frames: small files, fast tests


def test_save_restore_round_trip(tmp_path):
    """A fresh learner restored from a checkpoint has identical weights, optimizer, scheduler and counter,
    and its next update is identical to the original's."""
    path = str(tmp_path / "checkpoint.pth")
    a = make_learner(seed=0, **SMALL)
    batch = make_batch(size=36)
    for _ in range(2):
        a.step(**batch)
    a.save(path, counters={"episodes": 5, "env_steps": 1234})
    assert os.listdir(tmp_path) == ["checkpoint.pth"], "no temporary file left behind"

    b = make_learner(seed=1, **SMALL)
    assert not same(params(a.online), params(b.online))
    assert b.restore(path) == {"updates": 2, "episodes": 5, "env_steps": 1234}
    assert b.updates == 2
    assert same(params(a.online), params(b.online)) and same(params(a.target), params(b.target))
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        assert same(sa["state"][k], sb["state"][k])
    assert a.scheduler.state_dict() == b.scheduler.state_dict()

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
    torch.load(path, weights_only=False)          # the file really does carry a payload
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


@pytest.mark.parametrize("section", ["online", "target", "optimizer", "scheduler", "counters"])
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
