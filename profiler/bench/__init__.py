"""Bench: the profiler's speed measured against its own baselines in one run (``bench``), how a
profile's cost grows with the model (``scaling``), and the scan kernel alone (``bench_scan``)."""

from __future__ import annotations

from ..base.face import lazy_face

__all__, __getattr__ = lazy_face(__name__, {
    ".bench": ("run_bench", "render", "markdown", "machine_info"),
    ".scaling": ("bench_scaling", "parse_shape", "render_scaling"),
})
