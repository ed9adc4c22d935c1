"""The launcher: command line, process supervision and the run-wide status line."""
