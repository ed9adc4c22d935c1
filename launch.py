#!/usr/bin/env python3
"""mario-apex launcher: `python launch.py --help` explains every flag."""

import sys

from launcher.cli import main

if __name__ == "__main__":
    sys.exit(main())
