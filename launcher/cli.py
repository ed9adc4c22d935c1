"""The command line of launch.py: flags -> a validated Config, or a one-line error and exit 2.

Only light imports at module level: spawned children re-import launch.py, and the learner and
replay server must stay free of gym, nes-py and cv2 (and quick to start).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap

from common.addresses import has_ipc, ipc_only, is_loopback
from common.addresses import AddressError, parse_endpoint
from common.config import LAUNCH_ONLY, TEST_ENV_ID, SECTIONS, Config, ConfigError, parse_assignment

EPILOG = f"""\
examples:
  python launch.py                                  train on Super Mario Bros 1-1 with a live window
  python launch.py --headless --max-steps 20000     no window, stop after 20,000 env steps
  python launch.py --env {TEST_ENV_ID} --headless   the tiny built-in test environment
  python launch.py --set lr=2.5e-4 --set batch_size=64   change any config field (see --help-config)
  python launch.py --resume runs/2026-11-25_15-37-25_run   continue a run where it stopped
  python launch.py --play runs/2026-11-25_15-37-25_run   watch the trained agent (or name a .pth)
  python launch.py --plot runs/2026-11-25_15-37-25_run    learning_curve.png of a run

learner on a GPU machine, actors where the screen is:
  python launch.py keys mykeys                      once: key pairs in mykeys/learner and mykeys/actor
  python launch.py --role learner --bind 0.0.0.0 --keys mykeys/learner            on the GPU machine
  python launch.py --role actor --learner gpu-box --keys mykeys/actor --actors 4   on the desktop

Ctrl+C (or SIGTERM) stops every process this launcher started cleanly; the learner writes
checkpoint_final.pth. Stopping the learner side leaves actors playing on their last weights;
stopping the actor side leaves the learner waiting for them.
Started on a terminal with a checkpoint in the runs folder, the launcher asks whether to load it:
n/new starts new training, l/load/y/yes loads it; Ctrl+C (exit status 130) or Ctrl+D (exit status 1)
quits without starting anything.
Each run writes to <runs-dir>/YYYY-MM-DD_HH-MM-SS_run/: config.json, log.txt, checkpoints,
TensorBoard events (tensorboard --logdir <run folder>) and summary.json.
"""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad value in one line (no usage block) and exits 2, and takes no
    abbreviations (`--max-episode 5` is an error, not --max-episodes)."""

    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _ranged(kind, low, high, what: str):
    """An argparse type accepting a `kind` number in [low, high]; anything else is a one-line error."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _ranged(int, 1, float("inf"), "a positive integer")
_unit_float = _ranged(float, 0.0, 1.0, "a number between 0 and 1")
PLAY_EPISODES = 3


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog="launch.py",
        description="mario-apex: distributed DQN for Super Mario Bros. "
        "Starts the replay server, the learner and the actors as separate processes "
        "connected over ZeroMQ.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--role",
        choices=("all", "learner", "replay", "actor"),
        default="all",
        help="processes to start here: all (default); learner (the learner and the replay server, or "
        "the learner alone with --replay); replay (the replay server alone); actor (the actors)",
    )
    p.add_argument(
        "--keys",
        metavar="DIR",
        help="CurveZMQ keys (from `python launch.py keys DIR`): its learner/ "
        "folder on the learner side, its actor/ folder on the actor side; encrypts and authenticates links",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --bind without keys (anyone who "
        "can reach the ports can send experience and read weights)",
    )
    p.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="place the roles on a running Ray cluster (pip install -r requirements-cluster.txt; `ray start` on "
        "each machine): auto (RAY_ADDRESS, or the cluster this machine belongs to), HOST:PORT of its head, or "
        "ray://HEAD:10001 (Ray Client). The replay server and learner go on a node with a GPU, actors 1.. on "
        "free CPUs, actor 0 (window, video) here",
    )
    p.add_argument(
        "--learner-resource",
        metavar="NAME",
        help="with --cluster: the Ray resource the learner's node has (default GPU; e.g. a custom resource "
        "from `ray start --resources '{\"learner\": 1}'`)",
    )
    p.add_argument(
        "--resume",
        metavar="PATH",
        help="continue from a checkpoint file or a run folder (the newer of "
        "checkpoint_final.pth and checkpoint.pth); the run goes on in that folder",
    )
    p.add_argument(
        "--resume-reset-exploration",
        type=_unit_float,
        metavar="EPS",
        help="with --resume: restart epsilon from EPS (it decays again from there)",
    )
    p.add_argument(
        "--resume-new-env",
        action="store_true",
        help="with --resume: allow an --env (or show_a_button, jump_repress) other than the "
        "checkpoint's (refused without it: one replay memory and log.txt would then mix both envs)",
    )
    p.add_argument(
        "--play",
        metavar="PATH",
        help="watch a trained agent: play greedy episodes with the network of "
        "a checkpoint file or a run folder (as for --resume; window unless --headless), record "
        "mario_play.mp4 beside the checkpoint; no training",
    )
    p.add_argument("--episodes", type=_positive_int, metavar="N", help=f"episodes for --play (default {PLAY_EPISODES})")
    p.add_argument(
        "--plot",
        metavar="RUN_FOLDER",
        help="write RUN_FOLDER/learning_curve.png (reward and x position over env steps, evaluations marked) and exit",
    )
    p.add_argument(
        "--serial",
        action="store_true",
        help="one process, no ZeroMQ: the algorithm read top to bottom, "
        "for debugging; slower than the default (launcher/serial.py)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set any config field, e.g. --set lr=2.5e-4 (repeatable; list: --help-config)",
    )
    p.add_argument("--help-config", action="store_true", help="list every config field with its default and exit")
    _add_field_flags(p)
    return p


def _add_field_flags(p: argparse.ArgumentParser) -> None:
    """A flag for each config field declared with one: --name VALUE, a switch --name, or --no-name for a
    switch that is on by default. The flag is the field: one name, one doc, the field's own checks."""
    group = p.add_argument_group(
        "settings", "config fields with a flag of their own (--set NAME=VALUE sets any field, see --help-config)"
    )
    for f in dataclasses.fields(Config):
        if "flag" not in f.metadata:
            continue
        flag, doc = field_flag(f), f.metadata["doc"].removesuffix(" ...")
        if f.type == "bool":
            help_text = f"off: {doc}" if f.default else doc
            group.add_argument(
                flag, dest=f.name, action="store_const", const=not f.default, default=None, help=help_text
            )
        else:
            group.add_argument(flag, dest=f.name, metavar=f.metadata["flag"], type=_field_value(f.name), help=doc)


def field_flag(f: dataclasses.Field) -> str:
    """A field's flag: --name, or --no-name for a switch that is on by default."""
    return f"--{'no-' if f.type == 'bool' and f.default else ''}{f.name.replace('_', '-')}"


def _field_value(name: str):
    """An argparse type: the text as config field `name` takes it, checked as the field is (alone)."""

    def parse(text: str):
        try:
            if name == "bind":  # HOST[:PORT]: the port goes to base_port (config_from_args)
                parse_endpoint(text, Config.base_port, "bind")
                return text
            _, value = parse_assignment(f"{name}={text}")
            Config(**{name: value})
        except (ConfigError, AddressError) as exc:  # (argparse names the flag: "argument --learner: the port in ...")
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{name}: ")) from None
        return value

    return parse


def config_from_args(args: argparse.Namespace, base: dict | None = None) -> Config:
    """Defaults (or a resumed run's config), then --set values, then the fields' own flags (which win).
    Raises ConfigError."""
    values = dict(base or {})  # old field names too: Config.from_dict reads them, a new name given wins
    for assignment in args.set:
        name, value = parse_assignment(assignment)
        values[name] = value
    for f in dataclasses.fields(Config):
        if "flag" in f.metadata and getattr(args, f.name) is not None:
            values[f.name] = getattr(args, f.name)
    if args.bind:
        try:
            values["bind"], values["base_port"] = parse_endpoint(
                args.bind, values.get("base_port", Config.base_port), "--bind"
            )
        except AddressError as exc:
            raise ConfigError(str(exc)) from None
    return Config.from_dict(values)


def resumed_base(saved: dict, runs_dir: str) -> dict:
    """A resumed run's config before the flags given now: the saved one, without what the last launch chose
    for itself (LAUNCH_ONLY), in the runs folder of this launch."""
    return {**{k: v for k, v in saved.items() if k not in LAUNCH_ONLY}, "runs_dir": runs_dir}


def check_network(args: argparse.Namespace, config: Config):
    """The role's flags fit together and links off this machine are secured; returns the CurveKeys
    to use (None without --keys). Raises ConfigError (or KeysError) with one line."""
    from common.keys import load_keys

    if args.learner and args.role != "actor":
        raise ConfigError("--learner is for --role actor (the other roles listen with --bind)")
    if args.replay and args.role not in ("learner", "actor"):
        raise ConfigError("--replay is for --role learner or --role actor")
    if args.resume and args.role == "actor":
        raise ConfigError("--resume is for the learner side: an actor side continues from the learner it joins")
    binds = args.role != "actor"
    if binds and not ipc_only(config) and not args.keys and not args.insecure:  # TCP ports, no keys
        if not is_loopback(config.bind):
            raise ConfigError(
                f"--bind {config.bind} listens beyond this machine: create keys with `python launch.py "
                "keys DIR` and pass --keys (DIR/learner here, DIR/actor on the actor machines), or pass "
                "--insecure to accept anyone who can reach the ports"
            )
        if has_ipc():  # (where ZeroMQ has no ipc, loopback TCP is the only way)
            raise ConfigError(
                "local_ipc=false opens loopback TCP ports that every user of this machine can reach: "
                "pass --keys or --insecure (or keep local_ipc on)"
            )
    if not args.keys:
        return None
    return load_keys(args.keys, server=binds, client=args.role != "replay")  # a learner connects to its replay


def help_config() -> str:
    """Every config field by section, with its type, default and doc (from the fields' metadata)."""
    lines, section = ["config fields, by section (change any with --set NAME=VALUE):"], None
    flags = {f.name: field_flag(f) for f in dataclasses.fields(Config) if "flag" in f.metadata}
    for field_section, name, kind, default, doc in sorted(Config.describe(), key=lambda row: SECTIONS.index(row[0])):
        if field_section is not section:
            section = field_section
            lines += ["", f"[{section.name}] {section.title}"]
        flag = f", flag {flags[name]}" if name in flags else ""
        lines.append(f"  {name} ({kind}, default {default!r}{flag})")
        lines.append(textwrap.fill(doc, width=110, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["keys"]:
        return _keys(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.help_config:
        print(help_config())
        return 0
    if args.episodes is not None and not args.play:
        parser.error("--episodes is for --play (to stop training after N episodes: --max-episodes)")
    if args.plot:
        return _plot(parser, args.plot)
    if args.play:
        return _play(parser, args)
    if args.resume_reset_exploration is not None and not args.resume:
        parser.error("--resume-reset-exploration needs --resume")
    if args.resume_new_env and not args.resume:
        parser.error("--resume-new-env needs --resume")
    from common.keys import KeysError

    if args.learner_resource and not args.cluster:
        parser.error("--learner-resource is for --cluster")
    try:
        config = config_from_args(args)
        keys = None if args.serial or args.cluster else check_network(args, config)
    except (ConfigError, KeysError) as exc:
        parser.error(str(exc))
    if args.serial:
        return _serial(parser, args, config)
    if args.cluster:
        return _cluster(parser, args, config)
    from launcher.resume import ResumeError, ResumePlan, latest_checkpoint, load_resume_state, plan_resume

    resume_from = args.resume
    if not resume_from and sys.stdin.isatty():
        latest = latest_checkpoint(config.runs_dir)
        resume_from = latest and ask_to_resume(latest)
    plan = ResumePlan()
    if resume_from:
        try:  # the checkpoint's config, with the flags given now on top
            checkpoint, state = load_resume_state(resume_from)
            config = config_from_args(args, base=resumed_base(state["config"], config.runs_dir))
            plan = plan_resume(checkpoint, state, config, args.resume_reset_exploration, args.resume_new_env)
        except (ResumeError, ConfigError) as exc:
            parser.error(str(exc))
    from launcher.supervisor import Supervisor, StartError

    try:
        supervisor = Supervisor(config, plan, args.role, keys)
    except StartError as exc:
        parser.error(str(exc))
    return supervisor.run()


def _cluster(parser: OneLineParser, args: argparse.Namespace, config: Config) -> int:
    """--cluster: the roles placed by Ray (launcher/ray_backend.py; Ray is imported only here)."""
    given = [
        flag
        for flag, value in (
            ("--role", args.role != "all"),
            ("--resume", args.resume),
            ("--keys", args.keys),
            ("--bind", args.bind),
            ("--learner", args.learner),
            ("--replay", args.replay),
        )
        if value
    ]
    if given:
        parser.error(
            f"--cluster places every role and makes this run's keys and addresses itself: it takes no {given[0]}"
        )
    try:
        from launcher.ray_backend import ClusterSupervisor
    except ImportError as exc:
        parser.error(f"--cluster needs Ray: pip install -r requirements-cluster.txt ({exc})")
    from launcher.supervisor import StartError

    try:
        supervisor = ClusterSupervisor(config, args.cluster, args.learner_resource or "GPU")
    except StartError as exc:
        parser.error(str(exc))
    return supervisor.run()


def _serial(parser: OneLineParser, args: argparse.Namespace, config: Config) -> int:
    """--serial: actor, replay and learner in this process, no ZeroMQ, no child processes (launcher/serial.py)."""
    if args.role != "all" or args.resume or config.actors > 1:
        parser.error(
            "--serial runs one actor, the replay and the learner in this process: it takes no --role, "
            "--resume or more than one actor"
        )
    from launcher.serial import run_serial
    from launcher.supervisor import StartError

    try:
        return run_serial(config)
    except StartError as exc:
        parser.error(str(exc))
    except KeyboardInterrupt:  # Ctrl+C before the loop started
        return 130


def _keys(argv: list[str]) -> int:
    """`launch.py keys DIR`: a new CurveZMQ key set (see common/keys.py)."""
    parser = OneLineParser(
        prog="launch.py keys",
        description="Create CurveZMQ key pairs for a learner side and "
        "its actor machines: DIR/learner (for --role learner --keys) and DIR/actor (for --role "
        "actor --keys). Copy each folder to its machine; the secret keys never need to travel.",
    )
    parser.add_argument("dir", metavar="DIR", help="folder to create the keys in (must not hold keys yet)")
    args = parser.parse_args(argv)
    from common.keys import KeysError, create_keys

    try:
        learner, actor = create_keys(args.dir)
    except KeysError as exc:
        parser.error(str(exc))
    print(
        f"mario-apex: wrote {learner} (learner side: --role learner --keys {learner}) and {actor} "
        f"(actor side: --role actor --keys {actor})"
    )
    return 0


def _plot(parser: OneLineParser, run_dir: str) -> int:
    from launcher.plot import PlotError, plot_run

    try:
        print(f"mario-apex: wrote {plot_run(run_dir)}")
    except PlotError as exc:
        parser.error(str(exc))
    return 0


def _play(parser: OneLineParser, args: argparse.Namespace) -> int:
    from actor.play import play_checkpoint
    from common.checkpoint import CheckpointError
    from launcher.resume import ResumeError, find_checkpoint

    try:
        results = play_checkpoint(
            find_checkpoint(args.play),
            args.episodes or PLAY_EPISODES,
            headless=args.headless,
            record=args.video is not False,
            say=lambda text: print(f"mario-apex: {text}", flush=True),
        )
    except (CheckpointError, ResumeError) as exc:
        parser.error(str(exc))
    except KeyboardInterrupt:
        return 130
    flags = sum(r.flag for r in results)
    print(
        f"mario-apex: {len(results)} episode(s), mean x_pos {sum(r.x_pos for r in results) / len(results):.0f}, "
        f"flag reached {flags} time(s)"
    )
    return 0


ANSWERS = {"n": False, "new": False, "l": True, "load": True, "y": True, "yes": True}


def ask_to_resume(latest: str, read=input) -> str | None:
    """Like the original trainer, ask whether to continue `latest` (main asks only on a terminal);
    returns it, or None for new training. Asks again until the answer is one of ANSWERS.
    Ctrl+C exits with status 130 and Ctrl+D with 1, without starting anything."""
    question = f"Found a checkpoint in {latest}.\nStart new training (n) or load the latest checkpoint (l)? [n/l]: "
    while True:
        try:
            answer = read(question).strip().lower()
        except (KeyboardInterrupt, EOFError) as exc:
            print("\nmario-apex: no answer; nothing started", file=sys.stderr)
            raise SystemExit(130 if isinstance(exc, KeyboardInterrupt) else 1)
        if answer in ANSWERS:
            return latest if ANSWERS[answer] else None
        question = "Please answer n (new training) or l (load the checkpoint) [n/l]: "


if __name__ == "__main__":
    sys.exit(main())
