#!/usr/bin/env python3
"""mario-apex launcher: `python launch.py --help` explains every flag."""

import sys

if __name__ == "__main__":
    # Imported here, not above: each role's process re-imports this file (multiprocessing spawn) and
    # would otherwise load the whole launcher (replay snapshots, numba) for nothing, ~2 s per role.
    from launcher.cli import main

    sys.exit(main())
