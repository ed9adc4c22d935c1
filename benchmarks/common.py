"""Shared bits of the benchmark scripts: argument parsing, timing, machine description."""
from __future__ import annotations

import argparse
import os
import platform
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
    fn()   # warm up
    n, start = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)
