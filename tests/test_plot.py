"""--plot's learning curve: a moving-average window that suits short and long runs, flags marked."""

import matplotlib

from launcher.plot import moving_window, plot_run

matplotlib.use("Agg")


def test_the_moving_average_window_suits_the_run():
    assert [moving_window(n) for n in (1, 3, 50, 100, 1_000, 100_000)] == [1, 3, 10, 10, 50, 200]


def test_a_run_with_a_greedy_flag_is_drawn(tmp_path):
    lines = [
        f"[2026-12-03 10:00:{i % 60:02d}] Episode {i + 1}, Reward: {i}.0, Actor: 0, Steps: 100, X: {300 + i}, "
        f"Flag: {'yes' if i == 30 else 'no'}, Epsilon: 0.5"
        for i in range(40)
    ]
    lines.insert(
        35, "[2026-12-03 10:01:00] Eval 1, Reward: 300.0, Actor: 0, Steps: 400, X: 3161, Flag: yes, Env steps: 3500"
    )
    (tmp_path / "log.txt").write_text("\n".join(lines) + "\n")
    out = plot_run(str(tmp_path))
    picture = matplotlib.pyplot.imread(out)
    assert picture.shape[:2] == (750, 1000) and picture.std() > 0.05
