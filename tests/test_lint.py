"""ruff (pyflakes' rules, see ruff.toml) over the whole repository, so lint fails the test run."""
import subprocess
import sys

from tests.harness import REPO


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(REPO)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_test_has_a_timeout(pytestconfig):
    """pytest-timeout (requirements-dev.txt) with pytest.ini's limit: a hang fails instead of hanging CI."""
    assert pytestconfig.pluginmanager.hasplugin("timeout")
    assert float(pytestconfig.getini("timeout")) > 0
