"""Benchmark scripts (run them as files: `python benchmarks/cpu.py`); `shapes` holds what they share."""
