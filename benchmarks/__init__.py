"""kubetune's benchmarks: scripts that print figures and the conditions they ran under.

Run one with ``python -m benchmarks.<name> [--full]`` from the repository root, or all of them
with ``benchmarks/run_all``. Results are written as JSON into ``benchmarks/results/``.
Nothing here is imported by the product; tests only smoke-run the smallest configurations.
"""
