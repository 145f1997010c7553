"""Benchmarks with their own entry points: they print figures, they never assert timings."""
