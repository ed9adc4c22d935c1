"""Shared fixtures: `launch` starts the real launcher and guarantees nothing outlives the test."""

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time

import pytest

from tests.harness import LaunchedRun

# Settings that make the test env learn in seconds on 2 cores. Its episodes last ~15 steps, so
# per-episode video files would dominate the actor: tests about videos use WITH_VIDEO instead.
# The corridor is as plain at 42x42 as at 84x84, and each forward and update costs about a quarter
# (the Nature CNN takes 36 and up); the Mario tests keep 84. Every role of a run needs the same size,
# so a learner side started without the env settings takes SMALL_FRAMES.
TEST_FRAME_SIZE = 42
SMALL_FRAMES = ("--set", f"frame_size={TEST_FRAME_SIZE}")
WITH_VIDEO = (
    "--env",
    "MarioApexTest-v0",
    "--headless",
    *SMALL_FRAMES,
    "--set",
    "learning_starts=500",
    "--set",
    "epsilon_decay_steps=3000",
    "--set",
    "publish_every=20",
    "--set",
    "target_update_every=200",
    "--set",
    "replay_capacity=20000",
    "--set",
    "eval_every_episodes=0",
)
FAST_TEST_ENV = WITH_VIDEO + ("--no-video",)


@pytest.fixture
def one_torch_thread():
    """One intra-op thread, as on a loaded 2-core machine; restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def launch(tmp_path):
    runs = []

    def start(*args: str, **options) -> LaunchedRun:
        folder = tmp_path / f"launch{len(runs)}"
        folder.mkdir()
        run = LaunchedRun(folder, *args, **options)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.cleanup()


def require(*tools: str) -> None:
    """Skip the calling test, naming what is missing, when a command-line tool is not installed."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH (.ci/run installs it)")


def fake_tool(monkeypatch, folder, name: str, stderr: str = "", status: int = 0) -> None:
    """Put first on PATH a `name` command that prints `stderr` and exits with `status`."""
    script = folder / name
    script.write_text(f"#!/bin/sh\necho {shlex.quote(stderr)} >&2\nexit {status}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")


@contextlib.contextmanager
def x_server():
    """A real X server (Xvfb) on a free display number; yields the DISPLAY value."""
    require("Xvfb")
    number = next(
        n
        for n in range(90, 200)
        if not os.path.exists(f"/tmp/.X11-unix/X{n}") and not os.path.exists(f"/tmp/.X{n}-lock")
    )
    server = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(f"/tmp/.X11-unix/X{number}"):
            assert server.poll() is None and time.monotonic() < deadline, "Xvfb did not start"
            time.sleep(0.05)
        yield f":{number}"
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def xvfb():
    with x_server() as display:
        yield display


def process_hooks() -> tuple:
    """What a RoleRuntime built in this process replaces: the SIGINT and SIGTERM handlers and
    threading.excepthook."""
    return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), threading.excepthook


@contextlib.contextmanager
def kept_process_hooks():
    """Puts process_hooks() back on the way out, so the rest of the suite still stops on Ctrl+C and SIGTERM."""
    sigint, sigterm, excepthook = process_hooks()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, sigint)
        signal.signal(signal.SIGTERM, sigterm)
        threading.excepthook = excepthook


@pytest.fixture
def keep_process_hooks():
    """For tests that build a RoleRuntime in the pytest process."""
    with kept_process_hooks():
        yield
