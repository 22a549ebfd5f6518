"""Default profile settings, in one torch-free module: the profiler, the results and the TUI's form
(which must show before torch loads) all read them from here."""

from __future__ import annotations

DEFAULT_CRITERIA = ("magnitude", "wanda", "snip", "fisher", "obs", "flap", "captum", "random", "ssm_energy")
DEFAULT_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_TOLERANCE = 0.10  # relative perplexity increase considered "safe" in the ranking

# `ssm-profile recover` (ssm_profile.recovery.train): the default budget is a few minutes of training for the
# embedded models on 2 busy cores, inside the 10 minutes with the measurements before and after.
RECOVER_STEPS = 100
RECOVER_LR = 1e-3
RECOVER_TEMPERATURE = 2.0
