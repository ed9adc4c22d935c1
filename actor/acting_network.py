"""The actor's greedy policy: the Q-network's argmax for one observation, exact or quantized.

An actor's forward sits between one emulator step and the next, so it is on the critical path, and
it runs on a cold cache (the emulator ran in between), where streaming the first fully connected
layer's 6.4 MB of weights costs most. With that layer as int8 (one scale per output row, weights
only) and the convolutions in bfloat16, the cold batch-1 forward takes about a third less time
(`benchmarks/bench_actor.py`). Only acting changes: the learner trains in float32 and evaluation
episodes use the float32 network. Int8 actors with a float learner are ActorQ's recipe (Krishnan et
al., "QuaRL", TMLR 2022), where they left the learned policies' rewards unchanged.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.network import QNetwork, greedy_actions, head_to_q

Policy = Callable[[np.ndarray], np.ndarray]
"""A batch of stacked uint8 observations (B, S, H, W) -> their greedy actions (B,)."""


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale per output row: weight ~= q * scale[:, None]."""
    scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale


class Int8Policy:
    """argmax of the network's action head with bfloat16 convolutions and an int8 first linear layer.

    The dueling value stream is left out, as in QNetwork.greedy: it adds the same to every action. The
    1/255 input scaling is folded into the first convolution's weights."""

    def __init__(self, net: QNetwork):
        """ValueError if the network is not QNetwork's layout: (conv, ReLU)..., Flatten, then
        Linear, ReLU, Linear."""
        bf16 = torch.bfloat16
        layout = [type(m) for m in (*net.features, *net.head)]
        convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
        expected = [nn.Conv2d, nn.ReLU] * len(convs) + [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]
        if layout != expected or any(c.groups != 1 or c.dilation != (1, 1) or c.padding_mode != "zeros" for c in convs):
            raise ValueError("the int8 policy supports QNetwork's layout only")
        fc1, fc2 = net.head[0], net.head[2]
        self.convs = [
            (
                (c.weight.detach() / 255.0 if i == 0 else c.weight.detach()).to(bf16),
                c.bias.detach().to(bf16),
                c.stride,
                c.padding,
            )
            for i, c in enumerate(convs)
        ]
        self.fc1_weight, scale = quantize_rows(fc1.weight.detach())
        self.fc1_scale, self.fc1_bias = scale.to(bf16), fc1.bias.detach().to(bf16)
        self.fc2_weight, self.fc2_bias = fc2.weight.detach().clone(), fc2.bias.detach().clone()
        self.num_actions = net.num_actions

    def head(self, frames: torch.Tensor) -> torch.Tensor:
        """The action head's float32 outputs (advantages, or Q without dueling; quantiles of either with
        QR-DQN) for a uint8 batch."""
        x = frames.to(torch.bfloat16)
        for weight, bias, stride, padding in self.convs:
            x = F.conv2d(x, weight, bias, stride, padding).relu_()
        x = torch.ops.aten._weight_int8pack_mm(x.flatten(1), self.fc1_weight, self.fc1_scale)
        x = x.add_(self.fc1_bias).relu_()
        return F.linear(x.float(), self.fc2_weight, self.fc2_bias)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return head_to_q(self.head(torch.from_numpy(batch)), self.num_actions).argmax(dim=1).numpy()


def make_policy(net: QNetwork, precision: str) -> Policy:
    """The greedy policy of `net` at a precision chosen by `choose_precision` (float32 or int8)."""
    if precision == "int8":
        return Int8Policy(net)
    return lambda batch: greedy_actions(net, batch)


def choose_precision(net: QNetwork, config) -> tuple[str, str]:
    """(float32 or int8, why) for config.acting_precision. int8 needs PyTorch's int8 weight-only matmul
    and bfloat16 convolutions on this CPU; auto takes it only where it is at least 10% faster."""
    if config.acting_precision == "float32":
        return "float32", "as configured"
    shape = (config.frame_stack, config.frame_size, config.frame_size)
    obs = np.random.default_rng(0).integers(0, 256, (1, *shape), dtype=np.uint8)  # a batch of one
    try:
        int8 = Int8Policy(net)
        int8(obs)
    except (RuntimeError, AttributeError, NotImplementedError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return "float32", f"int8 is not available here ({first})"
    if config.acting_precision == "int8":
        return "int8", "as configured"
    fast, exact = _forward_ms(int8, make_policy(net, "float32"), obs)
    chosen = "int8" if fast < 0.9 * exact else "float32"
    return chosen, f"a forward takes {fast:.2f} ms in int8, {exact:.2f} ms in float32 on this CPU"


def _forward_ms(first: Policy, second: Policy, obs: np.ndarray, repeats: int = 15) -> tuple[float, float]:
    """Median ms per forward of each, timed alternately so a busy machine slows both alike."""
    times: tuple[list, list] = ([], [])
    for _ in range(repeats + 1):
        for policy, spent in zip((first, second), times):
            start = time.perf_counter()
            policy(obs)
            spent.append(time.perf_counter() - start)
    return tuple(float(np.median(spent[1:])) * 1e3 for spent in times)
