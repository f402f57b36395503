"""Benchmarks: one module per benchmark, each runnable as ``python -m bench.<name>``."""
