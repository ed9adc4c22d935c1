"""The status line's rates: averaged over a window long enough that once-a-second reports never read 0/s."""
from launcher import status
from launcher.status import RunStatus


def test_rates_never_read_zero_between_reports(monkeypatch):
    """The learner reports 20 more updates every second; the line is drawn every 0.4 s, out of step with
    the reports. (A 1 s window read 0, 20 or 40; over 10 s one report more or less moves it by a tenth.)"""
    clock = [1000.0]
    monkeypatch.setattr(status.time, "monotonic", lambda: clock[0])
    run = RunStatus(replay_capacity=100)
    seen = []
    reported = 0
    for tick in range(75):                    # 30 s
        clock[0] = 1000.0 + tick * 0.4
        while reported <= clock[0] - 1000.0:          # the reports due by now, one a second
            run.on_report({"role": "learner", "index": 0, "kind": "progress", "values": {"updates": 20 * reported}})
            run.on_report({"role": "actor", "index": 0, "kind": "progress", "values": {"steps": 150 * reported}})
            reported += 1
        run.line()
        seen.append(run.rates)
    later = seen[10:]                         # after the first few seconds
    assert all(16 <= u <= 22 for _, u in later), [round(u, 1) for _, u in later]
    assert all(120 <= s <= 165 for s, _ in later), [round(s) for s, _ in later]
