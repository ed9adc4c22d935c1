"""Every benchmark script runs in its smoke mode and prints its figures, so none of them rots."""
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
    ("bench_replay_service", ["inserts:", "sample+update batch  32:", "sample+update batch 256:", "goal >= 1.0"]),
])
def test_benchmark_smoke_mode(name, expected):
    result = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--smoke"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for text in expected:
        assert text in result.stdout, result.stdout
