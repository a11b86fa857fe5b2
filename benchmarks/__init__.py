"""Benchmarks: run with ``python -m benchmarks.<name>``; never part of the timed tests."""
