"""The status line's rates: averaged over a window long enough that once-a-second reports never read 0/s."""

from launcher import status
from common.records import ActorProgress, CheckpointCounters, EpisodeReport, LearnerProgress
from launcher.status import RunStatus


def test_rates_never_read_zero_between_reports(monkeypatch):
    """The learner reports 20 more updates every second; the line is drawn every 0.4 s, out of step with
    the reports. (A 1 s window read 0, 20 or 40; over 10 s one report more or less moves it by a tenth.)"""
    clock = [1000.0]
    monkeypatch.setattr(status.time, "monotonic", lambda: clock[0])
    run = RunStatus(replay_capacity=100)
    seen = []
    reported = 0
    for tick in range(75):  # 30 s
        clock[0] = 1000.0 + tick * 0.4
        while reported <= clock[0] - 1000.0:  # the reports due by now, one a second
            run.on_report(
                {"role": "learner", "index": 0, "kind": "progress", "values": LearnerProgress(updates=20 * reported)}
            )
            run.on_report(
                {"role": "actor", "index": 0, "kind": "progress", "values": ActorProgress(actor_steps=150 * reported)}
            )
            reported += 1
        run.line()
        seen.append(run.rates)
    later = seen[10:]  # after the first few seconds
    assert all(16 <= u <= 22 for _, u in later), [round(u, 1) for _, u in later]
    assert all(120 <= s <= 165 for s, _ in later), [round(s) for s, _ in later]


def test_a_resumed_run_goes_on_from_its_checkpoints_counters(monkeypatch):
    """No updates/s spike from the restored count, the best reward of earlier sessions is kept, and the
    --max-steps bar counts this session's steps, not the run's."""
    from launcher.console import Console

    clock = [1000.0]
    monkeypatch.setattr(status.time, "monotonic", lambda: clock[0])
    run = RunStatus(
        replay_capacity=100,
        before=CheckpointCounters(episodes=900, env_steps=200_000, updates=25_000, best_reward=321.2),
    )
    for second in range(1, 13):
        clock[0] = 1000.0 + second
        run.on_report(
            {"role": "learner", "index": 0, "kind": "progress", "values": LearnerProgress(updates=25_000 + 20 * second)}
        )
        run.on_report(
            {
                "role": "actor",
                "index": 0,
                "kind": "progress",
                "values": ActorProgress(actor_steps=200_000 + 150 * second, session_steps=150 * second),
            }
        )
        run.line()
        assert run.rates[1] <= 25 and run.rates[0] <= 200, run.rates
    run.on_report({"role": "actor", "index": 0, "kind": "episode", "values": EpisodeReport(reward=50.0)})
    assert run.best_reward == 321.2 and run.summary()["best_reward"] == 321.2
    assert run.total_episodes == 901
    console = Console(max_steps=10_000, interactive=True)
    try:
        console.update(run)
        assert console._bar.n == 150 * 12, "this session's steps"
    finally:
        console.close()


def test_the_last_line_gives_the_sessions_average_rates(monkeypatch):
    """150 steps/s for 60 s, then a 5 s stop with nothing: the last line gives the session's average,
    9,000 steps in 65 s, not the last ten seconds' (half of them the stop)."""
    clock = [1000.0]
    monkeypatch.setattr(status.time, "monotonic", lambda: clock[0])
    run = RunStatus(replay_capacity=100, before=CheckpointCounters(updates=500))
    for second in range(1, 61):
        clock[0] = 1000.0 + second
        run.on_report(
            {
                "role": "actor",
                "index": 0,
                "kind": "progress",
                "values": ActorProgress(actor_steps=150 * second, session_steps=150 * second),
            }
        )
        run.on_report(
            {"role": "learner", "index": 0, "kind": "progress", "values": LearnerProgress(updates=500 + 20 * second)}
        )
        run.line()
    clock[0] += 5
    assert "steps 9,000 (138/s) | episodes 0 | updates 1,700 (18.5/s)" in run.line(whole_run=True)
    assert "steps 9,000 (75/s)" in run.line(), "the window's rate, for comparison"


def test_a_resumed_runs_lines_before_the_first_reports_read_no_spike(monkeypatch):
    """While a resumed run starts, lines are drawn before any process has reported (its counts read 0);
    the first reports then bring the restored counts back, which is no progress: the rates stay this
    session's (they once read 97,587 steps/s and 12,099 updates/s)."""
    clock = [1000.0]
    monkeypatch.setattr(status.time, "monotonic", lambda: clock[0])
    run = RunStatus(
        replay_capacity=100, before=CheckpointCounters(episodes=5_893, env_steps=1_000_000, updates=124_000)
    )
    for second in range(1, 30):
        clock[0] = 1000.0 + second
        if second > 10:  # the processes report from here on
            run.on_report(
                {
                    "role": "learner",
                    "index": 0,
                    "kind": "progress",
                    "values": LearnerProgress(updates=124_000 + 10 * (second - 10)),
                }
            )
            run.on_report(
                {
                    "role": "actor",
                    "index": 0,
                    "kind": "progress",
                    "values": ActorProgress(
                        actor_steps=1_000_000 + 100 * (second - 10), session_steps=100 * (second - 10)
                    ),
                }
            )
        run.line()
        assert run.rates[0] <= 110 and run.rates[1] <= 11, (second, run.rates)


def test_an_evaluation_is_placed_at_the_runs_env_steps_not_its_actors():
    """With 2 actors, actor 0's own count is about half the run's: an evaluation logged at it put every
    budget of bench_learning (and the learning curve) at half the env steps the run had played."""
    run = RunStatus(replay_capacity=100)
    run.on_report(
        {"role": "actor", "index": 0, "kind": "progress", "values": ActorProgress(actor_steps=900, session_steps=900)}
    )
    run.on_report(
        {"role": "actor", "index": 1, "kind": "progress", "values": ActorProgress(actor_steps=950, session_steps=950)}
    )
    episode = EpisodeReport(actor=1, episode=7, reward=1.0, steps=40, x_pos=300, epsilon=0.1, actor_steps=990)
    run.on_report({"role": "actor", "index": 1, "kind": "episode", "values": episode})
    assert run.env_steps_at(0, 1000) == 1000 + 990  # its own count at the evaluation, the other's newest
    assert RunStatus(replay_capacity=100).env_steps_at(0, 1000) == 1000  # one actor: its own count
