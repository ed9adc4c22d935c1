"""Benchmarks: each script prints its figures; `--smoke` runs a seconds-long version for the tests."""
