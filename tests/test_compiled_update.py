"""compile_update: the learner's loss and backward through torch.compile give the eager update's priorities,
metrics and weights, its checkpoints load into an eager learner, and a compiler that fails means one line
and an eager update, never a crash."""

import numpy as np
import pytest
import torch

from common.config import Config
from learner.learning import DQNLearner

CPU = torch.device("cpu")
SIZE = 36  # small frames: the network compiles faster

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_learner(log: list, **changes) -> DQNLearner:
    torch.manual_seed(0)  # same initial weights for every learner
    config = dict(
        batch_size=4,
        replay_capacity=64,
        learning_starts=0,
        frame_size=SIZE,
        lr=1e-3,
        lr_decay_updates=10,  # the LR schedule moves visibly
        target_update_every=2,  # hard target copies inside the few updates
        device="cpu",
    )
    return DQNLearner(Config(**{**config, **changes}), CPU, log=log.append)


def batches(count: int, seed: int = 0) -> list[tuple]:
    rng = np.random.default_rng(seed)
    return [
        (
            rng.integers(0, 256, (4, 8, SIZE, SIZE), dtype=np.uint8),
            rng.integers(0, 7, 4).astype(np.uint8),
            rng.standard_normal(4).astype(np.float32),
            np.array([0.729, 0.0, 0.81, 0.9], np.float32),
            rng.uniform(0.2, 1.0, 4).astype(np.float32),
        )
        for _ in range(count)
    ]


def assert_same_update(a: tuple, b: tuple) -> None:
    (metrics_a, priorities_a), (metrics_b, priorities_b) = a, b
    np.testing.assert_allclose(priorities_a, priorities_b, rtol=1e-5, atol=1e-6)
    assert metrics_a.keys() == metrics_b.keys()
    for name in metrics_a:
        assert metrics_a[name] == pytest.approx(metrics_b[name], rel=1e-5, abs=1e-6), name


def assert_same_weights(a: DQNLearner, b: DQNLearner) -> None:
    for net in ("online", "target"):
        sa, sb = getattr(a, net).state_dict(), getattr(b, net).state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key], rtol=1e-5, atol=1e-6, msg=f"{net}.{key}")


@pytest.mark.slow  # compiling takes about 10 s with a warm cache, a minute without, on a loaded 2-core machine
def test_compiled_update_matches_eager_and_its_checkpoint_loads_uncompiled(tmp_path):
    eager_log, compiled_log = [], []
    eager, compiled = make_learner(eager_log), make_learner(compiled_log, compile_update=True)
    assert not eager.compiled and compiled.compiled
    first = batches(5)
    for batch in first:
        assert_same_update(eager.step(*batch), compiled.step(*batch))
    assert compiled.compiled and not compiled_log, compiled_log  # it ran compiled, no fallback
    assert compiled.updates == eager.updates == 5
    assert eager.optimizer.lr < 1e-3  # the schedule moved, the same way in both
    assert_same_weights(eager, compiled)

    # The checkpoint has the eager learner's keys and loads into a learner without compile_update.
    path = str(tmp_path / "compiled.pth")
    compiled.save(path, {"episodes": 3})
    state = compiled.state_dict()
    assert not any("_orig_mod" in key for key in (*state["online"], *state["target"]))
    restored = make_learner([])
    assert restored.restore(path) == {"updates": 5, "episodes": 3}
    assert_same_weights(restored, compiled)
    for batch in batches(2, seed=1):  # Adam's moments and the schedule came back too
        assert_same_update(restored.step(*batch), compiled.step(*batch))
    assert_same_weights(restored, compiled)
    assert not eager_log and not compiled_log


def failing_compile(*args, **kwargs):
    raise RuntimeError("no C++ compiler found\nsecond line of the report")


def test_a_compile_that_fails_at_once_means_one_line_and_eager_updates(monkeypatch):
    monkeypatch.setattr(torch, "compile", failing_compile)
    log = []
    learner, eager = make_learner(log, compile_update=True), make_learner([])
    assert not learner.compiled
    assert log == ["compile_update: torch.compile failed (RuntimeError: no C++ compiler found); updating uncompiled"]
    for batch in batches(3):
        assert_same_update(eager.step(*batch), learner.step(*batch))
    assert len(log) == 1
    assert_same_weights(eager, learner)


def test_a_compile_that_fails_at_the_first_update_redoes_that_update_eagerly_once(monkeypatch):
    """torch.compile compiles at the first call: the error comes from inside step(), which then runs the
    same batch uncompiled (one update, not two) and stays uncompiled."""
    calls = []

    def compile_that_fails_when_called(fn, **kwargs):
        def compiled(*args):
            calls.append(kwargs)
            raise RuntimeError("InductorError: backend failed")

        return compiled

    monkeypatch.setattr(torch, "compile", compile_that_fails_when_called)
    log = []
    learner, eager = make_learner(log, compile_update=True), make_learner([])
    assert learner.compiled and not log
    for batch in batches(3):
        assert_same_update(eager.step(*batch), learner.step(*batch))
    assert calls == [{"mode": None}]  # the CPU's default mode (CUDA: reduce-overhead), tried once
    assert log == [
        "compile_update: torch.compile failed (RuntimeError: InductorError: backend failed); updating uncompiled"
    ]
    assert not learner.compiled and learner.updates == eager.updates == 3
    assert_same_weights(eager, learner)


def test_an_eager_update_still_raises_its_errors():
    """The fallback is for compiler failures only: without compile_update a bad batch still raises."""
    log = []
    learner = make_learner(log)
    frames, actions, rewards, bootstraps, weights = batches(1)[0]
    with pytest.raises(RuntimeError):
        learner.step(frames[:, :, :20], actions, rewards, bootstraps, weights)  # frames of the wrong size
    assert not log
