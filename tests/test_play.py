"""--play says what a greedy Mario that did not finish was doing at the end: how the episode ended and the
action it held."""

import re

import torch

import actor.play
from common.config import Config
from common.network import build_network
from common.records import STALL_END


def _always(action: int, config: Config) -> torch.nn.Module:
    """A network whose greedy action is always `action` (its last layer's weights zeroed, its bias one-hot)."""
    net = build_network(config)
    last = net.head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[action] = 1.0
    return net.eval()


def test_play_names_the_action_a_stopped_mario_was_holding(monkeypatch):
    config = Config(action_set="right_only")
    monkeypatch.setattr(actor.play, "load_policy", lambda path: (_always(2, config), config))
    lines: list[str] = []
    (result,) = actor.play.play_checkpoint("unused.pth", 1, headless=True, record=False, say=lines.append)
    assert not result.flag and result.x_pos < 400  # "right A" held: one jump, then the first goomba
    assert (result.last_action, result.last_action_repeats) == (2, result.steps)
    assert lines[-1].endswith(f"flag not reached: died (its last {result.steps} steps: 'right A')"), lines


def test_play_says_a_mario_standing_still_stalled(monkeypatch):
    """A Mario who never moves right is cut by eval_stall_steps, and --play says so (not "died")."""
    config = Config(action_set="right_only", eval_stall_steps=60)
    monkeypatch.setattr(actor.play, "load_policy", lambda path: (_always(0, config), config))
    lines: list[str] = []
    (result,) = actor.play.play_checkpoint("unused.pth", 1, headless=True, record=False, say=lines.append)
    assert result.end == STALL_END and not result.flag and 60 <= result.steps <= 61  # (x settles on step 1)
    assert lines[-1].endswith(f"flag not reached: stalled (its last {result.steps} steps: 'NOOP')"), lines


def test_play_with_exploration_names_no_held_action(monkeypatch):
    """With epsilon > 0 the last steps are partly random: naming "the" held action would mislead."""
    config = Config(action_set="right_only")
    monkeypatch.setattr(actor.play, "load_policy", lambda path: (_always(2, config), config))
    lines: list[str] = []
    (result,) = actor.play.play_checkpoint("unused.pth", 1, headless=True, record=False, epsilon=0.5, say=lines.append)
    assert not result.flag and re.search(r"flag not reached: (died|stalled|out of steps)$", lines[-1]), lines
