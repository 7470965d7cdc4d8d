"""The benchmark suite of issue 7: workloads, load clients, processes, report and chart.

Run it with ``python benchmarks/run.py``; see :mod:`benchmarks.run`.
"""
