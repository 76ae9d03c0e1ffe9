"""The performance suite's measurements, one module per figure (run them all with ``benchmarks/perf_suite.py``)."""
