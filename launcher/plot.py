"""`python launch.py --plot RUN_FOLDER`: the run's learning curve as a PNG, read from log.txt.

Two panels over env steps: episode reward and the x position reached, each training episode as
a faint dot with a moving average over it, and greedy evaluation episodes marked on top.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

_TRAIN = re.compile(r"^\[[^\]]+\] Episode (\d+), Reward: (-?[\d.]+), Actor: (\d+), Steps: (\d+), X: (\d+), "
                    r"Flag: (yes|no)")
_EVAL = re.compile(r"^\[[^\]]+\] Eval (\d+), Reward: (-?[\d.]+), Actor: (\d+), Steps: (\d+), X: (\d+), "
                   r"Flag: (yes|no), Env steps: (\d+)")


class PlotError(ValueError):
    """Nothing to plot; one-line message."""


@dataclass
class Curve:
    steps: np.ndarray        # env steps at the end of each episode
    reward: np.ndarray
    x_pos: np.ndarray
    flag: np.ndarray


def read_log(path: str) -> tuple[Curve, Curve]:
    """(training, evaluation) episodes from log.txt; lines that match neither are skipped."""
    train, evaluation, steps = [], [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if m := _TRAIN.match(line):
                steps += int(m[4])
                train.append((steps, float(m[2]), int(m[5]), m[6] == "yes"))
            elif m := _EVAL.match(line):
                evaluation.append((int(m[7]), float(m[2]), int(m[5]), m[6] == "yes"))
    return _curve(train), _curve(evaluation)


def _curve(rows) -> Curve:
    array = np.array(rows, dtype=float).reshape(-1, 4)
    return Curve(array[:, 0], array[:, 1], array[:, 2], array[:, 3].astype(bool))


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) == 0:
        return values
    window = max(1, min(window, len(values)))
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def plot_run(run_dir: str, out: str | None = None) -> str:
    """Write the learning curve of a run folder; returns the PNG's path. Raises PlotError."""
    log = os.path.join(run_dir, "log.txt")
    if not os.path.isfile(log):
        raise PlotError(f"{run_dir}: no log.txt (is this a run folder?)")
    train, evaluation = read_log(log)
    if len(train.steps) == 0:
        raise PlotError(f"{log}: no finished episodes to plot yet")
    import matplotlib
    matplotlib.use("Agg")                     # files only: no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    window = max(1, len(train.steps) // 50)
    for ax, values, eval_values, label in ((axes[0], train.reward, evaluation.reward, "episode reward"),
                                           (axes[1], train.x_pos, evaluation.x_pos, "x position reached")):
        ax.scatter(train.steps, values, s=4, alpha=0.25, color="tab:blue", label="training episodes")
        ax.plot(train.steps, moving_average(values, window), color="tab:blue", lw=2,
                label=f"moving average ({window} episodes)")
        if len(evaluation.steps):
            ax.scatter(evaluation.steps, eval_values, s=40, marker="D", color="tab:orange", zorder=3,
                       label="greedy evaluation")
            flags = evaluation.flag
            if flags.any():
                ax.scatter(evaluation.steps[flags], eval_values[flags], s=120, marker="*", color="gold",
                           edgecolor="black", zorder=4, label="evaluation reached the flag")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=8)
    axes[1].set_xlabel("env steps")
    flags = int(train.flag.sum())
    fig.suptitle(f"{os.path.basename(os.path.normpath(run_dir))}: {len(train.steps):,} episodes, "
                 f"{int(train.steps[-1]):,} env steps, {flags} flag{'s' if flags != 1 else ''}")
    fig.tight_layout()
    out = out or os.path.join(run_dir, "learning_curve.png")
    try:
        fig.savefig(out, dpi=100)
    except OSError as exc:
        raise PlotError(f"cannot write {out}: {exc.strerror}") from None
    finally:
        plt.close(fig)
    return out
