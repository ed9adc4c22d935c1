"""DQN learning: the TD target, the prioritized Huber loss, the optimizer, the target network.

No sockets here: the learner exposes `step(batch)`, `save(path)` and `restore(path)`, and one
dict (`state_dict`) is the whole learner checkpoint.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from common.config import Config
from common.network import build_network
from learner.adam import Adam


def td_targets(
    rewards: torch.Tensor, bootstraps: torch.Tensor, next_q_target: torch.Tensor, next_q_online: torch.Tensor | None
) -> torch.Tensor:
    """y = R + bootstrap * Q_target(s', a'), where R is the discounted n-step return, bootstrap is
    gamma^k for the next obs k steps on (0 after a terminal step), and a' = argmax_a Q_online(s', a)
    for double DQN (next_q_online given) or argmax_a Q_target(s', a) for plain DQN."""
    if next_q_online is not None:
        next_actions = next_q_online.argmax(dim=1, keepdim=True)
    else:
        next_actions = next_q_target.argmax(dim=1, keepdim=True)
    next_value = next_q_target.gather(1, next_actions).squeeze(1)
    return rewards + bootstraps * next_value


def quantile_targets(
    rewards: torch.Tensor, bootstraps: torch.Tensor, next_z_target: torch.Tensor, next_z_online: torch.Tensor | None
) -> torch.Tensor:
    """QR-DQN's target quantiles (B, N): R + bootstrap * each quantile of Z_target(s', a'), with a' chosen
    by the mean of the quantiles (Q) as td_targets chooses it; next_z_* are (B, actions, N)."""
    chooser = next_z_online if next_z_online is not None else next_z_target
    next_actions = chooser.mean(dim=2).argmax(dim=1)
    next_z = next_z_target[torch.arange(len(next_actions), device=next_actions.device), next_actions]
    return rewards.unsqueeze(1) + bootstraps.unsqueeze(1) * next_z


def quantile_huber_loss(z: torch.Tensor, target_z: torch.Tensor) -> torch.Tensor:
    """QR-DQN's loss per transition (B,) for quantiles z (B, N) against target quantiles (B, N): the sum
    over quantiles i of the mean over targets j of |tau_i - 1{u_ij < 0}| * Huber(u_ij), where
    u_ij = target_j - z_i and tau_i = (2i + 1) / 2N is the quantile z_i estimates."""
    n = z.shape[1]
    tau = (torch.arange(n, device=z.device, dtype=z.dtype) + 0.5) / n
    u = target_z.unsqueeze(1) - z.unsqueeze(2)  # (B, i, j)
    huber = torch.where(u.abs() <= 1.0, 0.5 * u * u, u.abs() - 0.5)
    return ((tau.view(1, n, 1) - (u.detach() < 0).to(z.dtype)).abs() * huber).mean(dim=2).sum(dim=1)


def linear_decay(end_factor: float, updates: int):
    """LR multiplier: 1 at update 0, falling linearly to end_factor at `updates`, then held."""

    def factor(step: int) -> float:
        return 1.0 - (1.0 - end_factor) * min(step, updates) / updates

    return factor


def forward_backward_ms(net: torch.nn.Module, config: Config, bfloat16: bool, repeats: int = 3) -> float:
    """Median ms of one batch_size forward and backward of `net` on the CPU, in bfloat16 or float32; the
    gradients it leaves are cleared (no weight changes)."""
    generator = torch.Generator().manual_seed(0)
    size = (config.batch_size, config.frame_stack, config.frame_size, config.frame_size)
    obs = torch.randint(0, 256, size, dtype=torch.uint8, generator=generator)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            net(obs).float().sum().backward()
        times.append(time.perf_counter() - start)
    net.zero_grad(set_to_none=True)
    return float(np.median(times[1:])) * 1e3


class DQNLearner:
    def __init__(self, config: Config, device: torch.device, log=print, check_mixed_precision: bool = True):
        self.config = config
        self.device = device
        self.online = build_network(config).to(device)
        self.target = build_network(config).to(device)
        self.target.load_state_dict(self.online.state_dict())
        self.target.requires_grad_(False)
        # One fused kernel for the whole Adam step on CUDA: the update is launch-bound there.
        self.optimizer = Adam(self.online.parameters(), lr=config.lr, eps=config.adam_eps, fused=device.type == "cuda")
        self.lr_factor = linear_decay(config.lr_end_factor, config.lr_decay_updates)
        self.updates = 0
        # Mixed precision: autocast for the forward passes; on CUDA float16 with a gradient scaler.
        cuda = device.type == "cuda"
        self.autocast_dtype = torch.float16 if cuda else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda and config.mixed_precision)
        self.log = log
        self.mixed_precision = config.mixed_precision
        if self.mixed_precision and device.type == "cpu" and check_mixed_precision:
            self.mixed_precision = self._bfloat16_pays()
        self._loss_fn, self.compiled = self._loss, False
        if config.compile_update:
            self._compile()

    def _compile(self) -> None:
        """compile_update: the loss (forward passes, TD targets, Huber loss) runs through torch.compile,
        whose backward is compiled with it. On CUDA reduce-overhead replays both as CUDA graphs, so a small
        batch costs a few launches instead of hundreds. Compiling a function, not the networks, keeps the
        parameters' names (checkpoints load into an uncompiled learner). Errors show up at the first call."""
        try:
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self._loss_fn, self.compiled = torch.compile(self._loss, mode=mode), True
        except Exception as exc:  # e.g. a Python version torch.compile does not support
            self._compile_failed(exc)

    def _compile_failed(self, exc: Exception) -> None:
        self._loss_fn, self.compiled = self._loss, False
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        self.log(f"compile_update: torch.compile failed ({type(exc).__name__}: {reason[:200]}); updating uncompiled")

    def _bfloat16_pays(self) -> bool:
        """A CPU without native bfloat16 (AVX2 only, say) emulates it: the update is then about 10x slower
        than in float32 (a 2-core AMD EPYC), where one with it ran 1.3x faster. Time both, keep the faster."""
        mixed = forward_backward_ms(self.online, self.config, bfloat16=True)
        full = forward_backward_ms(self.online, self.config, bfloat16=False)
        timing = f"a batch's forward and backward takes {mixed:.0f} ms in bfloat16, {full:.0f} ms in float32 here"
        if mixed < full:
            self.log(f"mixed_precision: {timing}; training in bfloat16")
            return True
        self.log(f"mixed_precision: {timing} (no native bfloat16 on this CPU?); training in float32")
        return False

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.mixed_precision)

    def beta(self) -> float:
        """Importance-sampling exponent, annealed linearly from per_beta_start to 1."""
        c = self.config
        return c.per_beta_start + (1.0 - c.per_beta_start) * min(1.0, self.updates / c.per_beta_updates)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        if not (array.flags.writeable and array.flags.c_contiguous):
            array = np.array(array)  # a writable copy: network buffers are read-only
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    def step(
        self, frames: np.ndarray, actions: np.ndarray, rewards: np.ndarray, bootstraps: np.ndarray, weights: np.ndarray
    ) -> tuple[dict, np.ndarray]:
        """One gradient update on a batch (frames (B, 2S, H, W): obs then next obs); returns
        (metrics, new priorities |TD error| + eps)."""
        s = self.config.frame_stack
        frames_t = self._tensor(frames)
        obs, next_obs = frames_t[:, :s], frames_t[:, s:]
        actions_t = self._tensor(actions.astype(np.int64))
        rewards_t, bootstraps_t = self._tensor(rewards), self._tensor(bootstraps)
        weights_t = self._tensor(weights)

        inputs = (obs, next_obs, actions_t, rewards_t, bootstraps_t, weights_t)
        try:
            loss, td_error, q_mean = self._backward(inputs)
        except Exception as exc:
            if not self.compiled:
                raise
            self._compile_failed(exc)  # no weights changed yet: the same batch again, uncompiled
            loss, td_error, q_mean = self._backward(inputs)

        self.scaler.unscale_(self.optimizer)  # clip the true gradients (no-op without scaling)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.online.parameters(), self.config.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.updates += 1
        self._follow_lr_schedule()
        self._update_target()

        # Priorities and metrics come back in one transfer: one wait for the GPU per update, not four.
        back = torch.cat([td_error.abs().float(), torch.stack([loss.detach(), q_mean, grad_norm.float()]).float()])
        back = back.cpu().numpy().astype(np.float64)
        priorities = back[:-3] + self.config.per_eps
        metrics = {
            "loss": float(back[-3]),
            "q_mean": float(back[-2]),
            "grad_norm": float(back[-1]),
            "lr": self.optimizer.lr,
        }
        return metrics, priorities

    def _backward(self, inputs: tuple) -> tuple[torch.Tensor, ...]:
        """The loss and its gradients (a compiled backward is compiled at its first call, so errors show
        up here too)."""
        loss, td_error, q_mean = self._loss_fn(*inputs)
        self.online.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        return loss, td_error, q_mean

    def _loss(self, obs, next_obs, actions, rewards, bootstraps, weights) -> tuple[torch.Tensor, ...]:
        """(weighted Huber loss, TD errors, mean Q) for one batch: what compile_update compiles. With QR-DQN
        the loss is the quantile Huber loss and the "TD errors" (the new priorities) each transition's share of it."""
        with self._autocast():  # (B, actions, quantiles), quantiles 1 without QR-DQN
            z_all = self.online.quantiles_of(obs).float()
            with torch.no_grad():
                next_z_target = self.target.quantiles_of(next_obs).float()
                next_z_online = self.online.quantiles_of(next_obs).float() if self.config.double_dqn else None
        if self.config.quantiles:
            z = z_all[torch.arange(len(actions), device=actions.device), actions]
            target_z = quantile_targets(rewards, bootstraps, next_z_target, next_z_online)
            per_transition = quantile_huber_loss(z, target_z)
            return (weights * per_transition).mean(), per_transition.detach(), z_all.detach().mean()
        q_all = z_all.squeeze(2)
        q = q_all.gather(1, actions.unsqueeze(1)).squeeze(1)
        y = td_targets(
            rewards, bootstraps, next_z_target.squeeze(2), None if next_z_online is None else next_z_online.squeeze(2)
        )
        loss = (weights * F.smooth_l1_loss(q, y, reduction="none")).mean()
        return loss, (y - q).detach(), q_all.detach().mean()

    def _follow_lr_schedule(self) -> None:
        """The learning rate for the next update: lr times the schedule's factor at the updates made so far."""
        self.optimizer.lr = self.config.lr * self.lr_factor(self.updates)

    def _update_target(self) -> None:
        """Hard copy every target_update_every updates, or soft (Polyak) updates with target_tau."""
        tau = self.config.target_tau
        if tau > 0:
            with torch.no_grad():
                for target, online in zip(self.target.parameters(), self.online.parameters()):
                    target.lerp_(online, tau)
        elif self.updates % self.config.target_update_every == 0:
            self.target.load_state_dict(self.online.state_dict())

    # --- checkpoints -------------------------------------------------------------------------
    def state_dict(self, counters: dict | None = None) -> dict:
        return {
            "config": self.config.to_dict(),
            "online": self.online.state_dict(),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "counters": {**(counters or {}), "updates": self.updates},
            "rng": {"torch": torch.get_rng_state()},
        }

    def save(self, path: str, counters: dict | None = None) -> None:
        save_checkpoint(self.state_dict(counters), path)

    def restore(self, path: str) -> dict:
        """Load a checkpoint saved by `save`; returns its counters. Raises CheckpointError."""
        state = load_checkpoint(path)
        try:
            self.online.load_state_dict(state["online"])
            self.target.load_state_dict(state["target"])
            self.optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.updates = int(state["counters"]["updates"])
            self._follow_lr_schedule()
            if "rng" in state:
                torch.set_rng_state(state["rng"]["torch"])
        except (KeyError, TypeError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path}: does not fit this network/config ({str(exc).splitlines()[0]})") from None
        return dict(state["counters"])
