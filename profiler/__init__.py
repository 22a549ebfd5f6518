"""ssm-profile: which parts of a state-space language model can be pruned, by how much, at what loss.

The public API is imported lazily so that ``import profiler`` (and the CLI's start-up) stays cheap::

    from profiler import load_model, analyze, profile_model, ProfileResult
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_model": "profiler.resolve",
    "LoadedModel": "profiler.resolve",
    "analyze": "profiler.analysis",
    "AnalysisResult": "profiler.analysis",
    "DataSpec": "profiler.data",
    "ProfileSettings": "profiler.profile",
    "profile_model": "profiler.profile",
    "ProfileResult": "profiler.results",
    "make_plan": "profiler.plan",
    "load_plan": "profiler.plan",
    "apply_plan": "profiler.apply",
    "validate": "profiler.validate",
    "SSMProfileError": "profiler.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'profiler' has no attribute '{name}'")
