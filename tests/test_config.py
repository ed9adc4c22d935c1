"""Config: defaults, validation with one-line errors, --set parsing, from_dict, endpoints, describe, save."""

import dataclasses
import json
import math

import pytest

from common.addresses import AddressError, parse_endpoint
from common.config import (
    ENV,
    LEARNER,
    MODEL,
    REPLAY,
    ROLE_SECTIONS,
    SECTIONS,
    Config,
    ConfigError,
    frames_per_message,
    _coerce,
    parse_assignment,
)

FIELDS = {f.name: f.type for f in dataclasses.fields(Config)}


def config_error(**changes) -> str:
    """Building a Config with these values raises a one-line ConfigError; returns its message."""
    with pytest.raises(ConfigError) as info:
        Config(**changes)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_defaults_validate():
    """The defaults are a usable config (validate() is also run by the constructor)."""
    config = Config()
    config.validate()
    assert config.frame_stack == 4 and config.num_actions == 7


@pytest.mark.parametrize(
    "name,value",
    [
        # positive integers
        ("num_actions", -3),
        ("action_set", "left_only"),
        *[
            (n, v)
            for n in (
                "frame_skip",
                "frame_size",
                "frame_stack",
                "max_episode_steps",
                "chunk_size",
                "replay_capacity",
                "per_beta_updates",
                "batch_size",
                "lr_decay_updates",
                "target_update_every",
                "publish_every",
                "prefetch_batches",
                "actors",
            )
            for v in (0, -3)
        ],
        # non-negative integers
        *[
            (n, -1)
            for n in ("epsilon_decay_steps", "learning_starts", "checkpoint_every", "max_episodes", "max_steps", "seed")
        ],
        # fractions in [0, 1]
        *[
            (n, v)
            for n in ("epsilon_start", "epsilon_end", "per_alpha", "per_beta_start", "lr_end_factor")
            for v in (-0.1, 1.5, math.nan)
        ],
        # positive (and finite) floats
        *[
            (n, v)
            for n in ("lr", "adam_eps", "grad_clip_norm", "per_eps", "report_interval_s")
            for v in (0.0, -1e-3, math.nan, math.inf)
        ],
        ("gamma", 0.0),
        ("gamma", 1.01),
        ("gamma", -0.5),
        ("gamma", math.nan),
        ("device", "gpu"),
        ("device", "CUDA"),
        ("device", ""),
        ("base_port", 0),
        ("base_port", 65_534),
        ("base_port", 70_000),
        ("max_message_bytes", 1023),
        ("max_message_bytes", 0),
        ("frame_size", 257),
        ("transitions_per_request", -1),
        ("transitions_per_request", 4097),
        ("batch_size", 4097),
    ],
)
def test_invalid_value_raises_config_error_naming_the_field(name, value):
    """Each kind of unusable value is refused with a one-line message that names the field."""
    assert name in config_error(**{name: value})


@pytest.mark.parametrize(
    "name,value",
    [
        ("gamma", 1.0),
        ("epsilon_end", 0.0),
        ("epsilon_start", 1.0),
        ("base_port", 1),
        ("base_port", 65_533),
        ("max_message_bytes", 64 * 1024 + 32 * (8 * (84 * 84 + 16) + 32)),
        ("frame_size", 256),
        ("seed", 0),
        ("learning_starts", 0),
        ("device", "cpu"),
        ("transitions_per_request", 0),
        ("transitions_per_request", 4096),
    ],
)
def test_boundary_values_are_accepted(name, value):
    assert getattr(Config(**{name: value}), name) == value


@pytest.mark.parametrize(
    "changes,names",
    [
        ({"learning_starts": 1001, "replay_capacity": 1000}, ("learning_starts", "replay_capacity")),
        ({"batch_size": 64, "replay_capacity": 32, "learning_starts": 0}, ("batch_size", "replay_capacity")),
        ({"stall_terminal": True}, ("stall_terminal", "stall_steps")),
    ],
)
def test_cross_field_checks_name_both_fields(changes, names):
    message = config_error(**changes)
    assert all(n in message for n in names)


def test_learning_starts_equal_to_capacity_is_fine():
    assert Config(learning_starts=1000, replay_capacity=1000).learning_starts == 1000


# --- parse_assignment (--set name=value) ----------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("replay_capacity=1e5", ("replay_capacity", 100_000)),
        ("replay_capacity=2.5E4", ("replay_capacity", 25_000)),
        ("replay_capacity=100_000", ("replay_capacity", 100_000)),
        ("seed=-1", ("seed", -1)),
        ("seed= 42 ", ("seed", 42)),
        (" batch_size =64", ("batch_size", 64)),
        ("lr=2.5e-4", ("lr", 2.5e-4)),
        ("lr=1", ("lr", 1.0)),
        ("gamma=.9", ("gamma", 0.9)),
        ("headless=true", ("headless", True)),
        ("headless=True", ("headless", True)),
        ("headless=yes", ("headless", True)),
        ("headless=1", ("headless", True)),
        ("headless=on", ("headless", True)),
        ("double_dqn=false", ("double_dqn", False)),
        ("double_dqn=NO", ("double_dqn", False)),
        ("double_dqn=0", ("double_dqn", False)),
        ("double_dqn=off", ("double_dqn", False)),
        ("env=SuperMarioBros-2-1-v0", ("env", "SuperMarioBros-2-1-v0")),
        ("host=::1", ("bind", "::1")),
        ("runs_dir=a=b", ("runs_dir", "a=b")),
        ("device=cpu", ("device", "cpu")),
    ],
)
def test_parse_assignment_types_the_value(text, expected):
    name, value = parse_assignment(text)
    assert (name, value) == expected
    assert type(value) is type(expected[1])


def test_parse_assignment_float_field_gets_float_type():
    """An integer-looking value for a float field is still a float (lr=1 -> 1.0)."""
    assert type(parse_assignment("lr=1")[1]) is float


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("no_such_field=1", "no_such_field"),
        ("batchsize=32", "batchsize"),
        ("lr", "name=value"),
        ("=5", "name=value"),
        ("", "name=value"),
        ("batch_size=", "batch_size"),
        ("batch_size=abc", "batch_size"),
        ("batch_size=1.5", "batch_size"),
        ("batch_size=0x10", "batch_size"),
        ("batch_size=true", "batch_size"),
        ("batch_size=1.5e0", "batch_size"),  # not a whole number
        ("batch_size=1e-3", "batch_size"),
        ("batch_size=1e400", "batch_size"),  # infinite
        ("batch_size=nan", "batch_size"),
        ("lr=fast", "lr"),
        ("lr=", "lr"),
        ("headless=maybe", "headless"),
        ("headless=2", "headless"),
        ("headless=", "headless"),
    ],
)
def test_parse_assignment_rejects_unknown_names_and_garbage(text, fragment):
    """Unknown names, missing '=' and unparsable values give a one-line ConfigError naming the problem."""
    with pytest.raises(ConfigError) as info:
        parse_assignment(text)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_parse_assignment_result_goes_through_validation():
    """parse_assignment types the value; building the config then validates it."""
    name, value = parse_assignment("seed=-1")
    with pytest.raises(ConfigError, match="seed"):
        Config.from_dict({name: value})


# --- from_dict / _coerce -----------------------------------------------------------------------------


def test_from_dict_empty_gives_defaults():
    assert Config.from_dict({}) == Config()


def test_from_dict_rejects_unknown_keys_listing_them():
    with pytest.raises(ConfigError) as info:
        Config.from_dict({"lr": 1e-3, "zeta": 1, "alpha": 2})
    assert "alpha" in str(info.value) and "zeta" in str(info.value)


@pytest.mark.parametrize(
    "name,value",
    [
        ("batch_size", True),
        ("batch_size", 32.0),
        ("batch_size", "many"),
        ("batch_size", None),
        ("batch_size", [32]),
        ("lr", True),
        ("lr", "fast"),
        ("lr", None),
        ("lr", [1e-4]),
        ("headless", 1),
        ("headless", 0),
        ("headless", "perhaps"),
        ("headless", None),
        ("env", 5),
        ("env", None),
        ("env", ["SuperMarioBros-1-1-v0"]),
        ("device", True),
    ],
)
def test_from_dict_rejects_wrong_types(name, value):
    """A JSON value of the wrong type (an int field given a bool, a float or a non-number string; a bool
    field given 0/1; a str field given a number) is a ConfigError naming the field."""
    with pytest.raises(ConfigError) as info:
        Config.from_dict({name: value})
    assert name in str(info.value) and "\n" not in str(info.value)


def test_from_dict_widens_int_to_float():
    """JSON writes 1.0 as 1 in some tools; a float field accepts an int and stores a float."""
    config = Config.from_dict({"lr": 1, "gamma": 1})
    assert type(config.lr) is float and config.lr == 1.0


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_coerce_keeps_each_default_unchanged(name):
    """Every field's own default passes _coerce unchanged and with its declared type."""
    default = getattr(Config(), name)
    assert _coerce(name, default) == default
    assert type(_coerce(name, default)).__name__ == FIELDS[name]


def test_replace_validates():
    config = Config()
    assert config.replace(batch_size=8).batch_size == 8
    assert config.batch_size == 32, "replace returns a copy"
    with pytest.raises(ConfigError, match="batch_size"):
        config.replace(batch_size=0)


# --- endpoints, describe, save ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("10.0.0.2", ("10.0.0.2", 47555)),
        ("10.0.0.2:6000", ("10.0.0.2", 6000)),
        ("host.lan:1", ("host.lan", 1)),
        ("::1", ("::1", 47555)),
        ("[::1]", ("::1", 47555)),
        ("[::1]:6000", ("::1", 6000)),
    ],
)
def test_parse_endpoint(text, expected):
    assert parse_endpoint(text, 47555) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":6000",
        "10.0.0.2:",
        "10.0.0.2:x",
        "10.0.0.2:0",
        "10.0.0.2:65534",
        "[::1]x",
        "a/b:1",
        "[::1]:70000",
        "tcp://a:1",
    ],
)
def test_parse_endpoint_rejects(text):
    with pytest.raises(AddressError):
        parse_endpoint(text, 47555, "--learner")


def test_apex_epsilons():
    """eps_i = 0.4 ** (1 + 7 i / (N - 1)): 0.4 for actor 0, 0.4 ** 8 for the last; one actor gets 0.4."""
    config = Config(actors=8, envs_per_actor=1, epsilon_schedule="apex")
    eps = [config.apex_epsilon_of(i) for i in range(8)]
    assert eps[0] == pytest.approx(0.4) and eps[-1] == pytest.approx(0.4**8)
    assert eps[3] == pytest.approx(0.4**4) and eps == sorted(eps, reverse=True)
    assert Config(actors=1, envs_per_actor=1).apex_epsilon_of(0) == pytest.approx(0.4)


def test_apex_epsilons_go_to_every_env_of_every_actor():
    """4 actors of 2 envs get the 8 epsilons of 8 one-env actors, env j of actor i the (2 i + j)-th, and
    as many seeds: env j of actor i plays with seed + 2 i + j."""
    single = [Config(actors=8, envs_per_actor=1).apex_epsilon_of(i) for i in range(8)]
    config = Config(actors=4, envs_per_actor=2)
    assert [config.apex_epsilon_of(i, j) for i in range(4) for j in range(2)] == pytest.approx(single)
    assert [config.run_env(i, j) for i in range(4) for j in range(2)] == list(range(8))
    assert Config(actors=1, envs_per_actor=2).apex_epsilon_of(0, 1) == pytest.approx(0.4**8)


def test_actors_on_two_machines_share_one_apex_schedule():
    """4 actors on each of two machines (first_actor 0 and 4, total_actors 8) get the 8 distinct
    epsilons one 8-actor launcher would, and distinct run-wide numbers (their seeds)."""
    single = [Config(actors=8, envs_per_actor=1).apex_epsilon_of(i) for i in range(8)]
    machines = [Config(actors=4, envs_per_actor=1, first_actor=first, total_actors=8) for first in (0, 4)]
    assert [m.apex_epsilon_of(i) for m in machines for i in range(4)] == pytest.approx(single)
    assert [m.run_actor(i) for m in machines for i in range(4)] == list(range(8))
    with pytest.raises(ConfigError, match=r"actors 4\.\.7 do not fit in total_actors=6"):
        Config(actors=4, first_actor=4, total_actors=6)


def test_describe_has_a_doc_and_a_section_for_every_field():
    """--help-config lists every field, in order, with its section, type, default and a non-empty doc, all read
    from the fields' metadata (no source parsing)."""
    rows = Config.describe()
    assert [r[1] for r in rows] == list(FIELDS)
    defaults = Config()
    for section, name, kind, default, doc in rows:
        derived = name == "num_actions" and default == 0 and getattr(defaults, name) == 7  # from action_set
        assert section in SECTIONS, name
        assert kind == FIELDS[name] and (default == getattr(defaults, name) or derived)
        assert isinstance(doc, str) and doc.strip(), f"{name} has no doc"
    sections = {r[1]: r[0] for r in rows}
    assert (sections["env"], sections["gamma"], sections["replay_capacity"], sections["lr"]) == (
        ENV,
        MODEL,
        REPLAY,
        LEARNER,
    )
    assert [s for s in SECTIONS if s in sections.values()] == list(SECTIONS), "every section has fields"
    docs = {r[1]: r[4] for r in rows}
    assert docs["gamma"] == "Discount factor."
    assert "frame skip" in docs["frame_skip"].lower() or "frames" in docs["frame_skip"].lower()


def test_save_then_from_dict_round_trips(tmp_path):
    """config.json written by save() loads back into an equal Config, non-defaults included."""
    config = Config(
        env="MarioApexTest-v0",
        lr=2.5e-4,
        headless=True,
        seed=7,
        bind="::1",
        gamma=0.9,
        replay_capacity=5000,
        learning_starts=100,
        per_eps=1e-8,
    )
    path = tmp_path / "config.json"
    config.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert set(data) == set(FIELDS)
    assert Config.from_dict(data) == config
    assert path.read_text(encoding="utf-8").endswith("}\n")


def test_the_action_set_brings_its_own_number_of_actions():
    """action_set picks the joypad set; num_actions follows it unless given, also in replace()."""
    assert Config().num_actions == 7
    assert Config(action_set="right_only").num_actions == 5
    assert Config(action_set="complex").num_actions == 12
    assert Config(action_set="right_only").replace(action_set="simple").num_actions == 7
    assert Config(num_actions=12).num_actions == 12, "an explicit size stays (checked against the env at start)"


def test_a_batch_must_fit_in_one_message_when_frames_travel_in_it():
    """One batch of 32 stacks of 4x84x84 frames (obs and next obs; a batch_mirror also numbers each, and
    may send it along, 16 bytes) needs 1.8 MB per message; a smaller
    limit is refused with the way out, and the learner asks for no more than fit (learner/replay_batches.py)."""
    fits = 64 * 1024 + 32 * (8 * (84 * 84 + 16) + 32)
    with pytest.raises(ConfigError, match="batch_size 32 of 4x84x84 frame stacks does not fit in max_message_bytes"):
        Config(max_message_bytes=fits - 1)
    assert frames_per_message(32, 4, 84, fits) == 32
    assert frames_per_message(32, 4, 84, 64 * 1024 * 1024) == 1184


def test_renamed_fields_are_read_under_their_old_names_and_each_has_its_flag():
    """A config.json or checkpoint written before the fields took their flags' names loads as before."""
    from dataclasses import fields

    from common.config import RENAMED

    flagged = {f.name for f in fields(Config) if "flag" in f.metadata}
    assert set(RENAMED.values()) <= flagged
    old = {
        "env_id": "MarioApexTest-v0",
        "num_actors": 2,
        "record_video": False,
        "level_mode": "curriculum",
        "checkpoint_every_episodes": 7,
        "host": "::1",
        "learner_address": "gpu-box:6000",
        "replay_address": "replay-box",
    }
    new = dict(
        env="MarioApexTest-v0",
        actors=2,
        video=False,
        curriculum=True,
        checkpoint_every=7,
        bind="::1",
        learner="gpu-box:6000",
        replay="replay-box",
    )
    assert Config.from_dict(old) == Config(**new)
    assert Config.from_dict({"level_mode": "sample"}).curriculum is False
    assert Config.from_dict({**old, "actors": 3}).actors == 3  # the new name wins over the old
    with pytest.raises(ConfigError, match="level_mode must be sample or curriculum, got 'random'"):
        Config.from_dict({"level_mode": "random"})
    assert [parse_assignment(f"{k}={v}") for k, v in (("num_actors", "2"), ("level_mode", "curriculum"))] == [
        ("actors", 2),
        ("curriculum", True),
    ]


def test_a_role_reads_only_its_sections_and_its_checkpoints_still_record_the_whole_run():
    """run_role gives each role process Config.for_role: another section's field is an error, not a value."""
    config = Config(env="SuperMarioBros-1-2-v0", lr=3e-4, actors=3)
    learner, actor = config.for_role("learner"), config.for_role("actor")
    assert (learner.lr, learner.frame_stack, learner.actors) == (3e-4, 4, 3)
    with pytest.raises(AttributeError, match=r"the learner does not receive env settings \(env\)"):
        learner.env
    with pytest.raises(AttributeError, match="the actor does not receive learner settings"):
        actor.lr
    with pytest.raises(AttributeError, match="the replay does not receive actor settings"):
        config.for_role("replay").epsilon_start
    assert actor.env == "SuperMarioBros-1-2-v0" and actor.actor_queue_chunks() == config.actor_queue_chunks()
    assert learner.to_dict() == config.to_dict()  # what its checkpoints record for --resume
    assert Config.from_dict(learner.to_dict()) == config
    with pytest.raises(AttributeError):
        learner.lr = 1.0


def test_no_role_package_reads_a_setting_its_role_does_not_receive():
    """The static side of for_role: a `.field` of another section in a role's code would fail at run time
    only on the path that reads it; this finds it in every module."""
    import pathlib
    import re

    section = {f.name: f.metadata["section"] for f in dataclasses.fields(Config)}
    root = pathlib.Path(__file__).resolve().parent.parent
    found = []
    for package, role in (("actor", "actor"), ("learner", "learner"), ("replay_server", "replay")):
        for path in sorted((root / package).glob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                for name in re.findall(r"\.([a-z_]+)\b", line):
                    if name in section and section[name] not in ROLE_SECTIONS[role]:
                        found.append(f"{package}/{path.name}:{number}: {name} ({section[name].name})")
    assert not found, found
