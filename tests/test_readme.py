"""The README's commands work as written after its two set-up commands: they use the virtual
environment's programs (a bare `python launch.py` fails with ModuleNotFoundError outside it), and the
ones that finish in seconds are run exactly as printed."""

import re
import shlex
import subprocess
from pathlib import Path

from tests.harness import REPO

README = (REPO / "README.md").read_text()
# Commands in code blocks and in `inline code` that start a program of the project's.
COMMANDS = [
    c.strip()
    for c in re.findall(r"`([^`\n]*(?:launch\.py|-m benchmarks|tensorboard --)[^`\n]*)`", README)
    + re.findall(r"^((?:\.venv/bin/)?(?:python3?|tensorboard) [^\n#]*)", README, re.M)
]


def test_the_readme_names_commands():
    assert len(COMMANDS) >= 10, COMMANDS


def test_every_readme_command_uses_the_virtual_environment():
    bare = [c for c in COMMANDS if re.match(r"(python|tensorboard)\b", c) and "-m venv" not in c]
    assert not bare, f"commands that fail outside an activated venv: {bare}"


def test_the_quick_readme_commands_run_as_written(tmp_path):
    """keys, --help-config and TensorBoard's own check, from the repository root as the README says."""
    keys = next(c for c in COMMANDS if " keys mykeys" in c)
    argv = shlex.split(keys.replace("mykeys", str(tmp_path / "mykeys")))
    for command in (
        argv,
        [".venv/bin/python", "launch.py", "--help-config"],
        [".venv/bin/tensorboard", "--version_tb"],
    ):
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (command, result.stderr)
    assert (Path(tmp_path) / "mykeys" / "learner").is_dir() and (Path(tmp_path) / "mykeys" / "actor").is_dir()


def test_the_architecture_section_names_every_module():
    """ "How it works" is where a newcomer finds which file holds what: a module added, renamed or moved
    between packages without it being described there fails here."""
    section = README.split("\n## How it works\n", 1)[1].split("\n## ", 1)[0]
    missing = []
    for package in ("common", "actor", "replay_server", "learner", "launcher"):
        bullet = re.search(rf"^- \*\*{package}/\*\*:(.*?)(?=^- \*\*|^\S)", section, re.M | re.S)
        assert bullet, f"no bullet for {package}/ in How it works"
        for module in sorted((REPO / package).glob("*.py")):
            if module.name != "__init__.py" and not re.search(rf"`(?:{package}/)?{module.name}`", bullet.group(1)):
                missing.append(f"{package}/{module.name}")
    assert not missing, f"modules the README's How it works section does not describe in their package: {missing}"
