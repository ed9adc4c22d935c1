"""The learner, the replay server and the launcher's spawn path stay free of gym, nes-py and cv2,
so they run on a headless GPU box; role packages never import each other."""

import ast
import subprocess
import sys

from tests.harness import REPO

EMULATOR_MODULES = ("gym", "nes_py", "gym_super_mario_bros", "cv2")


def loaded(code: str, packages: tuple[str, ...]) -> str:
    """The modules of `packages` a fresh interpreter has loaded after running `code`, comma-separated."""
    code += f"\nprint(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {packages!r})))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_learner_and_replay_import_no_emulator_or_opencv():
    code = "import sys, launch, launcher.supervisor, learner.service, replay_server.server, common.runtime"
    imported = loaded(code, EMULATOR_MODULES)
    assert imported == "", f"imported: {imported}"


def test_role_packages_do_not_import_each_other():
    roles = ("actor", "learner", "replay_server")
    for role in roles:
        for path in (REPO / role).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                for name in names:
                    top = name.split(".")[0]
                    assert top not in roles or top == role, f"{path.relative_to(REPO)} imports {name}"


def test_a_role_process_loads_none_of_the_launcher_before_its_role():
    """spawn re-runs launch.py (as __mp_main__) in every role process, then imports role_entry's module:
    neither may load the launcher, numba or torch (the launcher alone cost each role ~2 s of start-up)."""
    code = (
        "import runpy, sys\nrunpy.run_path('launch.py', run_name='__mp_main__')\nfrom common.runtime import role_entry"
    )
    imported = loaded(code, ("launcher", "numba", "torch"))
    assert imported == "", f"imported: {imported[:300]}"
