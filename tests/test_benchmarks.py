"""Every benchmark script runs in its smoke mode and prints its figures, so none of them rots."""
import re
import subprocess
import sys

import pytest

from tests.harness import REPO

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name, expected", [
    ("bench_actor", ["bare emulator, frame skip 4:", "actor loop, window+video off:", "actor loop, video on:"]),
    ("bench_replay", ["insert:", "sample+update batch  32:", "sample+update batch 256:"]),
    ("bench_learner", ["learner batch  32,        float32:", "learner batch 256,        float32:",
                       "learner batch  32, mixed bfloat16:"]),
    ("bench_checkpoint", ["replay snapshot:", "PASS:", "learner checkpoint:"]),
    ("bench_pipeline", ["learner batch  32:", "weights publish->act:", "replay    20,000:", "actors 2:"]),
    ("bench_learning", ["test env solved:", "trained, greedy", "random policy", "untrained networks (start)"]),
    ("bench_learning --env mario", [re.compile(r"seed 0: (first greedy flag after|no greedy flag).*; \d+ evaluations; "
                                               r"at 1,000: x \d+, flags \d+%"),
                                    re.compile(r"goal \(first greedy flag within 1,000,000 env steps and 120 minutes "
                                               r"in every seed\): (met|missed)")]),
    ("bench_replay_service", [re.compile(rf"{label} +ours +[1-9]\d* transitions/s +cpprb +[1-9]\d* transitions/s +"
                                         r"ours/cpprb +\d+\.\d\dx") for label in
                              ("inserts:", r"sample\+update batch  32:", r"sample\+update batch 256:")]
     + [re.compile(r"goal >= 1\.0: (met on every figure|missed on .+)\n"), "torn batches (frames overwritten while "
        "read, dropped): 0"]),
])
def test_benchmark_smoke_mode(name, expected):
    script, *options = name.split()
    result = subprocess.run([sys.executable, "-m", f"benchmarks.{script}", *options, "--smoke"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for text in expected:       # a plain string must appear; a pattern must match a line with its figures
        found = text.search(result.stdout) if isinstance(text, re.Pattern) else text in result.stdout
        assert found, f"{getattr(text, 'pattern', text)!r} not in:\n{result.stdout}"
