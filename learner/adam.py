"""The learner's Adam: torch's Adam arithmetic without torch.optim.Optimizer.

torch.optim.Optimizer imports torch._dynamo, the compiler, at its first step, zero_grad or state_dict:
about 2 CPU-s, a third of a short run's CPU on a 2-core machine, at every learner start, for a learner
that never compiles (compile_update imports it itself). This calls torch's functional `adam` (foreach
or the fused CUDA kernel, as torch.optim.Adam picks) and keeps torch.optim.Adam's state_dict layout, so
checkpoints move between the two either way.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.adam import adam


class Adam:
    """Adam (Kingma and Ba, 2015) over one group of parameters, no weight decay or AMSGrad. The learning
    rate is `lr`, set by the learner before each step; `param_groups` is there for torch's GradScaler."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, eps: float, fused: bool = False):
        self.params = list(params)
        self.lr, self.eps, self.betas, self.fused = lr, eps, (0.9, 0.999), fused
        self.param_groups = [{"params": self.params}]
        self.state: dict[torch.nn.Parameter, dict[str, torch.Tensor]] = {}

    def _state_of(self, p: torch.nn.Parameter) -> dict[str, torch.Tensor]:
        """A parameter's step count and moments, made at its first step as torch.optim.Adam makes them."""
        if p not in self.state:
            step = torch.zeros((), device=p.device) if self.fused else torch.tensor(0.0)
            self.state[p] = {"step": step, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        return self.state[p]

    @torch.no_grad()
    def step(self) -> None:
        params = [p for p in self.params if p.grad is not None]
        states = [self._state_of(p) for p in params]
        adam(
            params,
            [p.grad for p in params],
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [],
            [s["step"] for s in states],
            fused=self.fused or None,
            amsgrad=False,
            beta1=self.betas[0],
            beta2=self.betas[1],
            lr=self.lr,
            weight_decay=0.0,
            eps=self.eps,
            maximize=False,
        )

    def state_dict(self) -> dict:
        """torch.optim.Adam's layout: per-parameter state keyed by the parameter's index, and the group's
        settings with the indices."""
        state = {i: dict(self.state[p]) for i, p in enumerate(self.params) if p in self.state}
        group = {
            "lr": self.lr,
            "betas": self.betas,
            "eps": self.eps,
            "weight_decay": 0.0,
            "amsgrad": False,
            "maximize": False,
            "foreach": None,
            "capturable": False,
            "differentiable": False,
            "fused": self.fused or None,
            "decoupled_weight_decay": False,
            "params": list(range(len(self.params))),
        }
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state_dict of this class or of torch.optim.Adam; ValueError if it does not fit."""
        groups = state_dict["param_groups"]
        if len(groups) != 1 or list(groups[0]["params"]) != list(range(len(self.params))):
            raise ValueError("the optimizer state has other parameters")
        loaded = {}
        for i, saved in state_dict["state"].items():
            p = self.params[int(i)]
            if saved["exp_avg"].shape != p.shape or saved["exp_avg_sq"].shape != p.shape:
                raise ValueError(f"the optimizer state of parameter {i} has another shape")
            step = saved["step"].to(p.device if self.fused else "cpu", torch.float32)
            moments = {k: saved[k].to(p.device, p.dtype) for k in ("exp_avg", "exp_avg_sq")}
            loaded[p] = {"step": step, **moments}
        self.state = loaded
