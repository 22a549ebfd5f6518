"""Bench: the profiler's speed measured against its own baselines in one run (``bench``), how a
profile's cost grows with the model (``bench_scaling``), and the scan kernel alone (``bench_scan``)."""
