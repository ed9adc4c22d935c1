"""`python launch.py --plot RUN_FOLDER`: the run's learning curve as a PNG, read from log.txt.

Two panels over env steps: episode reward and the x position reached, each training episode as
a faint dot with a moving average over it, and greedy evaluation episodes marked on top.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

_TRAIN = re.compile(
    r"^\[[^\]]+\] Episode (\d+), Reward: (-?[\d.]+), Actor: (\d+), Steps: (\d+), X: (\d+), "
    r"Flag: (yes|no)"
)
_EVAL = re.compile(
    r"^\[[^\]]+\] Eval (\d+), Reward: (-?[\d.]+), Actor: (\d+), Steps: (\d+), X: (\d+), "
    r"Flag: (yes|no), Env steps: (\d+)"
)


class PlotError(ValueError):
    """Nothing to plot; one-line message."""


@dataclass
class Curve:
    steps: np.ndarray  # env steps at the end of each episode
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


def moving_window(episodes: int) -> int:
    """A twentieth of the run, at least 10 episodes (all of them in a shorter run), at most 200."""
    return max(1, min(episodes, max(10, min(200, episodes // 20))))


def plot_run(run_dir: str, out: str | None = None) -> str:
    """Write the learning curve of a run folder; returns the PNG's path. Raises PlotError."""
    log = os.path.join(run_dir, "log.txt")
    if not os.path.isfile(log):
        raise PlotError(f"{run_dir}: no log.txt (is this a run folder?)")
    train, evaluation = read_log(log)
    if len(train.steps) == 0:
        raise PlotError(f"{log}: no finished episodes to plot yet")
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(10, 7.5), sharex=True)
    window = moving_window(len(train.steps))
    for ax, values, eval_values in (
        (axes[0], train.reward, evaluation.reward),
        (axes[1], train.x_pos, evaluation.x_pos),
    ):
        ax.scatter(train.steps, values, s=4, alpha=0.25, color="tab:blue", label="training episodes")
        ax.plot(
            train.steps,
            moving_average(values, window),
            color="tab:blue",
            lw=2,
            label=f"moving average ({window} episode{'s' if window != 1 else ''})",
        )
        if train.flag.any():
            ax.scatter(
                train.steps[train.flag],
                values[train.flag],
                s=60,
                marker="*",
                color="gold",
                edgecolor="tab:blue",
                zorder=3,
                label="training episode reached the flag",
            )
        if len(evaluation.steps):
            ax.scatter(
                evaluation.steps, eval_values, s=40, marker="D", color="tab:orange", zorder=3, label="greedy evaluation"
            )
            flags = evaluation.flag
            if flags.any():
                ax.scatter(
                    evaluation.steps[flags],
                    eval_values[flags],
                    s=160,
                    marker="*",
                    color="gold",
                    edgecolor="black",
                    zorder=4,
                    label="greedy evaluation reached the flag",
                )
                first = evaluation.steps[flags][0]
                ax.axvline(
                    first, color="black", lw=1, ls="--", zorder=1, label=f"first greedy flag ({int(first):,} env steps)"
                )
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("episode reward")
    axes[1].set_ylabel("x position reached")
    axes[1].set_xlabel("env steps")
    handles, labels = axes[0].get_legend_handles_labels()  # above the panels, never over the data
    fig.legend(handles, labels, loc="upper center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, 0.955))
    flags = int(train.flag.sum())
    fig.suptitle(
        f"{os.path.basename(os.path.normpath(run_dir))}: {len(train.steps):,} episodes, "
        f"{int(train.steps[-1]):,} env steps, {flags} training flag{'s' if flags != 1 else ''}, "
        f"{int(evaluation.flag.sum())} greedy"
    )
    fig.tight_layout(rect=(0, 0, 1, 0.91))
    out = out or os.path.join(run_dir, "learning_curve.png")
    try:
        fig.savefig(out, dpi=100)
    except OSError as exc:
        raise PlotError(f"cannot write {out}: {exc.strerror}") from None
    finally:
        plt.close(fig)
    return out
