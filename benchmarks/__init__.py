"""Performance benchmarks: each script measures alternatives side by side and prints their ratio.

Run them from the repository root as modules, e.g. `python -m benchmarks.step_overhead`.
"""
