"""Default profile settings, in one torch-free module: the profiler, the results and the TUI's form
(which must show before torch loads) all read them from here."""

from __future__ import annotations

DEFAULT_CRITERIA = ("magnitude", "wanda", "snip", "fisher", "obs", "flap", "captum", "random", "ssm_energy")
DEFAULT_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_TOLERANCE = 0.10  # relative perplexity increase considered "safe" in the ranking
