"""The Q-network (the Nature-DQN convolutional net) and its weights as plain arrays.

With `quantiles` N > 0 it is a QR-DQN network (Dabney et al., 2018): each action gets N quantiles of its
return distribution instead of one expected value, and Q is their mean.

Weights cross the network as raw float32 arrays keyed by parameter name (never pickles), so
actors and the learner convert with `weights_to_arrays` / `load_arrays`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class QNetwork(nn.Module):
    """Maps a uint8 stack of frames (B, stack, size, size) to one Q-value per action.

    With `dueling`, two heads estimate the state's value V and each action's advantage A, and
    Q = V + A - mean(A) (Wang et al., 2016). With `quantiles` N > 0 every output is N quantiles (the
    dueling sum taken per quantile) and Q is their mean; `quantiles_of` gives them."""

    def __init__(self, frame_stack: int, frame_size: int, num_actions: int, dueling: bool = False, quantiles: int = 0):
        super().__init__()
        self.num_actions = num_actions
        per_output = max(1, quantiles)
        self.features = nn.Sequential(
            nn.Conv2d(frame_stack, 32, kernel_size=8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, frame_stack, frame_size, frame_size)).shape[1]
        self.head = nn.Sequential(nn.Linear(flat, 512), nn.ReLU(), nn.Linear(512, num_actions * per_output))
        self.value = nn.Sequential(nn.Linear(flat, 512), nn.ReLU(), nn.Linear(512, per_output)) if dueling else None

    def greedy(self, frames: torch.Tensor) -> torch.Tensor:
        """argmax_a Q(frames, a). With the dueling head V and mean(A) are the same for every action, so
        argmax Q = argmax A: the value stream (half the weights) is skipped, which makes an actor's
        batch-1 forward about a third faster."""
        x = frames.float() / 255.0
        for layer in (*self.features, *self.head):
            x = layer.forward(x)  # forward, not __call__: no hook machinery, ~0.1 ms less at batch 1
        return head_to_q(x, self.num_actions).argmax(dim=1)

    def quantiles_of(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, actions, max(1, quantiles)): each action's return quantiles (one value: its expected return)."""
        features = self.features(frames.float() / 255.0)
        z = self.head(features).view(len(features), self.num_actions, -1)  # advantages, for the dueling head
        if self.value is not None:
            z = self.value(features).unsqueeze(1) + z - z.mean(dim=1, keepdim=True)
        return z

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.quantiles_of(frames).mean(dim=2)


def head_to_q(head_output: torch.Tensor, num_actions: int) -> torch.Tensor:
    """Q (B, actions) from the action head's flat output, the mean of each action's quantiles (with
    dueling, the advantages: V adds the same to every action)."""
    return head_output.view(len(head_output), num_actions, -1).mean(dim=2)


def greedy_action(net: QNetwork, obs: np.ndarray) -> int:
    """argmax_a Q(obs, a) for one stacked uint8 observation."""
    with torch.inference_mode():
        return int(net.greedy(torch.from_numpy(obs).unsqueeze(0)).item())


def greedy_actions(net: QNetwork, batch: np.ndarray) -> np.ndarray:
    """argmax_a Q(obs, a) for each of a batch of stacked uint8 observations."""
    with torch.inference_mode():
        return net.greedy(torch.from_numpy(batch)).numpy()


def build_network(config) -> QNetwork:
    return QNetwork(config.frame_stack, config.frame_size, config.num_actions, config.dueling, config.quantiles)


def weights_to_arrays(net: nn.Module) -> dict[str, np.ndarray]:
    return {name: t.detach().cpu().numpy() for name, t in net.state_dict().items()}


def load_arrays(net: nn.Module, arrays: dict[str, np.ndarray], assign: bool = False) -> None:
    """Load weights received from the network; ValueError if names or shapes do not match.
    With `assign` the copies become the parameters themselves (for a network built on "meta")."""
    expected = net.state_dict()
    if set(arrays) != set(expected):
        raise ValueError("weights do not match the network's parameter names")
    state = {}
    for name, ref in expected.items():
        array = arrays[name]
        if tuple(array.shape) != tuple(ref.shape) or array.dtype != np.float32:
            raise ValueError(f"weight {name} has shape {array.shape}/{array.dtype}, expected {tuple(ref.shape)}")
        if not np.isfinite(array).all():
            raise ValueError(f"weight {name} is not finite (NaN or inf)")
        state[name] = torch.from_numpy(array.copy())
    net.load_state_dict(state, assign=assign)


def network_from_arrays(config, arrays: dict[str, np.ndarray]) -> QNetwork:
    """A new network holding these weights, for an actor whose env thread may still be using the old
    one. Built on the meta device, so no time goes into a random initialisation; ValueError as load_arrays."""
    with torch.device("meta"):
        net = build_network(config)
    load_arrays(net, arrays, assign=True)
    return net.eval()
