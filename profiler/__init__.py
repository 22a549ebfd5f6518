"""ssm-profile: which parts of a state-space language model can be pruned, by how much, at what loss.

The public API is imported lazily so that ``import ssm_profile`` (and the CLI's start-up) stays cheap; each
name comes from its wing's public face (``ssm_profile.model``, ``ssm_profile.plan``, ...)::

    from ssm_profile import load_model, analyze, profile_model, ProfileResult
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_model": "ssm_profile.model",
    "LoadedModel": "ssm_profile.model",
    "analyze": "ssm_profile.model",
    "AnalysisResult": "ssm_profile.model",
    "DataSpec": "ssm_profile.calibration",
    "ProfileSettings": "ssm_profile.profiling",
    "profile_model": "ssm_profile.profiling",
    "ProfileResult": "ssm_profile.profiling",
    "RunRecord": "ssm_profile.profiling",
    "make_plan": "ssm_profile.plan",
    "PlanRequest": "ssm_profile.plan",
    "load_plan": "ssm_profile.documents",
    "write_plan": "ssm_profile.documents",
    "Plan": "ssm_profile.documents",
    "PruningRecord": "ssm_profile.documents",
    "ValidationReport": "ssm_profile.documents",
    "RecoveryRecord": "ssm_profile.documents",
    "RunRecipe": "ssm_profile.profiling",
    "apply_plan": "ssm_profile.pruning",
    "validate": "ssm_profile.validation",
    "SSMProfileError": "ssm_profile.base",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ssm_profile' has no attribute '{name}'")
