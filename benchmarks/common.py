"""Shared bits of the benchmark scripts: argument parsing, timing, machine description."""

from __future__ import annotations

import argparse
import os
import platform
import random
import socket
import time


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="a seconds-long run that only checks the script works")
    return p


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def rate(fn, seconds: float, min_iters: int = 3) -> float:
    """Calls fn() repeatedly for about `seconds`; returns calls per second."""
    fn()  # warm up
    n, start = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def free_base_port() -> int:
    """A base port with 4 consecutive free loopback ports (one run's ports), picked at random, whose ipc
    socket files (common/addresses.py) do not exist either: a killed run leaves its files behind, and a
    test that binds one of them itself (to stand for a busy channel) would fail to."""
    from common.addresses import private_ipc_dir

    for _ in range(200):
        base = random.randint(20_000, 60_000)
        if any(os.path.exists(os.path.join(private_ipc_dir(), f"{port}.sock")) for port in range(base, base + 4)):
            continue
        socks = []
        try:
            for port in range(base, base + 4):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range found")
