"""The learner's Adam (learner/adam.py): torch.optim.Adam's updates and state_dict, without importing
torch._dynamo."""

import subprocess
import sys

import pytest
import torch

from learner.adam import Adam


def nets(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    a = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    b = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    b.load_state_dict(a.state_dict())
    return a, b


def train(net: torch.nn.Module, optimizer, steps: int, set_lr, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    for i in range(steps):
        set_lr(optimizer, 1e-2 * (1 - i / 20))
        net.zero_grad(set_to_none=True)
        x = torch.randn(16, 6, generator=generator)
        net(x).pow(2).sum().backward()
        optimizer.step()


def ours_lr(optimizer, lr):
    optimizer.lr = lr


def torch_lr(optimizer, lr):
    optimizer.param_groups[0]["lr"] = lr


def test_steps_are_torch_adams_with_a_changing_learning_rate():
    mine, reference = nets()
    train(mine, Adam(mine.parameters(), lr=1e-2, eps=1.5e-4), 12, ours_lr)
    train(reference, torch.optim.Adam(reference.parameters(), lr=1e-2, eps=1.5e-4), 12, torch_lr)
    for (name, p), q in zip(mine.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7, msg=name)
    untouched, _ = nets()
    assert not torch.equal(next(mine.parameters()), next(untouched.parameters())), "training moved nothing"


def test_state_dicts_move_between_it_and_torch_adam_either_way():
    """A checkpoint of either continues in the other exactly as in itself (old checkpoints hold torch's)."""
    mine, reference = nets()
    ours = Adam(mine.parameters(), lr=1e-2, eps=1e-8)
    theirs = torch.optim.Adam(reference.parameters(), lr=1e-2, eps=1e-8)
    train(mine, ours, 5, ours_lr)
    train(reference, theirs, 5, torch_lr)

    into_torch = torch.optim.Adam(mine.parameters(), lr=1e-2, eps=1e-8)
    into_torch.load_state_dict(ours.state_dict())
    into_ours = Adam(reference.parameters(), lr=1e-2, eps=1e-8)
    into_ours.load_state_dict(theirs.state_dict())
    for a, b in zip(into_torch.state_dict()["state"].values(), into_ours.state_dict()["state"].values()):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-7)
    train(mine, into_torch, 5, torch_lr, seed=2)
    train(reference, into_ours, 5, ours_lr, seed=2)
    for p, q in zip(mine.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)


def test_a_state_dict_of_other_parameters_is_refused():
    small, _ = nets()
    other = torch.nn.Linear(6, 8)
    optimizer = Adam(other.parameters(), lr=1e-3, eps=1e-8)
    train_on = Adam(small.parameters(), lr=1e-3, eps=1e-8)
    train(small, train_on, 1, ours_lr)
    with pytest.raises(ValueError):
        optimizer.load_state_dict(train_on.state_dict())  # 4 parameters into 2
    first_two = Adam(list(small.parameters())[:2], lr=1e-3, eps=1e-8)
    shapes_differ = train_on.state_dict()
    shapes_differ["state"] = {0: shapes_differ["state"][0], 1: shapes_differ["state"][3]}
    shapes_differ["param_groups"][0]["params"] = [0, 1]
    with pytest.raises(ValueError):
        first_two.load_state_dict(shapes_differ)


def test_a_learner_trains_saves_and_restores_without_importing_the_compiler(tmp_path):
    """torch._dynamo costs about 2 CPU-s at every learner start; only compile_update may import it."""
    code = f"""
import sys
import numpy as np, torch
from common.config import Config
from learner.learning import DQNLearner
config = Config(frame_size=36, batch_size=4, learning_starts=0, replay_capacity=64)
learner = DQNLearner(config, torch.device("cpu"))
rng = np.random.default_rng(0)
batch = (rng.integers(0, 256, (4, 8, 36, 36), dtype=np.uint8), np.zeros(4, np.uint8),
         np.ones(4, np.float32), np.full(4, 0.9, np.float32), np.ones(4, np.float32))
learner.step(*batch)
learner.save({str(tmp_path / "c.pth")!r})
DQNLearner(config, torch.device("cpu")).restore({str(tmp_path / "c.pth")!r})
print("torch._dynamo" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
