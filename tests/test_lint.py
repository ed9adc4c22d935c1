"""ruff over the whole repository (pyproject.toml: pyflakes' rules and the formatter), so lint fails the test run."""

import subprocess
import sys

from tests.harness import REPO


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--no-cache", str(REPO)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ruff_finds_nothing():
    result = ruff("check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_code_is_formatted():
    """`ruff format` would change no file (run `.venv/bin/ruff format .` to fix a failure here)."""
    result = ruff("format", "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_test_has_a_timeout(pytestconfig):
    """pytest-timeout (requirements-dev.txt) with pytest.ini's limit: a hang fails instead of hanging CI."""
    assert pytestconfig.pluginmanager.hasplugin("timeout")
    assert float(pytestconfig.getini("timeout")) > 0
