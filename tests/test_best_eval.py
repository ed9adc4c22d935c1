"""best_eval.pth: saved only for a better evaluation (a flag beats any reward), kept across a resume,
refused by --resume with a reason, and never fatal when it cannot be written."""

import os

import pytest

from actor.best_eval import BEST_EVAL_FILE, BestEval
from common.config import TEST_ENV_ID, Config
from common.network import build_network
from common.records import EvalResult
from launcher.resume import ResumeError, load_resume_state


def _result(reward, flag=False):
    return EvalResult(actor=0, reward=reward, steps=10, x_pos=40, flag=flag, actor_steps=100)


def test_only_a_better_evaluation_replaces_the_kept_network(tmp_path):
    config, logs = Config(env=TEST_ENV_ID), []
    best = BestEval(str(tmp_path), config, logs.append)
    net = build_network(config)
    assert best.offer(_result(5.0), net)
    assert not best.offer(_result(5.0), net) and not best.offer(_result(4.0), net)
    assert best.offer(_result(1.0, flag=True), net), "a flag beats any reward"
    assert not best.offer(_result(9.0), net)
    again = BestEval(str(tmp_path), config, logs.append)  # a resumed run knows what to beat
    assert not again.offer(_result(9.0), net) and again.offer(_result(2.0, flag=True), net)
    assert logs == []


def test_resume_refuses_the_best_evaluation_file_with_a_reason(tmp_path):
    config = Config(env=TEST_ENV_ID)
    BestEval(str(tmp_path), config, print).offer(_result(1.0), build_network(config))
    with pytest.raises(ResumeError, match="best evaluation, for --play; it holds no training state"):
        load_resume_state(str(tmp_path / BEST_EVAL_FILE))


def test_an_unwritable_or_damaged_file_is_reported_and_training_goes_on(tmp_path):
    config, logs = Config(env=TEST_ENV_ID), []
    (tmp_path / BEST_EVAL_FILE).write_bytes(b"not a checkpoint")
    best = BestEval(str(tmp_path), config, logs.append)
    assert len(logs) == 1 and "unreadable" in logs[0]
    missing = BestEval(os.path.join(str(tmp_path), "gone", "deeper"), config, logs.append)
    assert not missing.offer(_result(1.0), build_network(config))
    assert len(logs) == 2 and "could not save best_eval.pth" in logs[1]
    assert best.offer(_result(1.0), build_network(config))
