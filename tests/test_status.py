"""The status line's rates: averaged over a window long enough that once-a-second reports never read 0/s."""
from launcher import status
from launcher.status import RunStatus


def test_rates_never_read_zero_between_reports(monkeypatch):
    """The learner reports 20 more updates every second; the line is drawn three times a second. (A 1 s
    window read 0, 20 and 40 by turns; over 10 s one report more or less moves it by a tenth.)"""
    clock = [1000.0]
    monkeypatch.setattr(status.time, "monotonic", lambda: clock[0])
    run = RunStatus(replay_capacity=100)
    seen = []
    for tick in range(90):                    # 30 s
        clock[0] = 1000.0 + tick / 3
        if tick % 3 == 0:
            run.on_report({"role": "learner", "index": 0, "kind": "progress", "values": {"updates": 20 * tick // 3}})
            run.on_report({"role": "actor", "index": 0, "kind": "progress", "values": {"steps": 150 * tick // 3}})
        run.line()
        seen.append(run.rates)
    later = seen[12:]                         # after the first few seconds
    assert all(16 <= u <= 22 for _, u in later), [round(u, 1) for _, u in later]
    assert all(120 <= s <= 165 for s, _ in later), [round(s) for s, _ in later]
