"""Benchmarks of issue 6: speed and memory against the alternatives, side by side (``python -m benchmarks``)."""
